//! Modules and libraries: loading PTX text (the kernels are the `.entry` names), functions and
//! kernels, and the simulated duration of a launch (`spin` reads its first `u64` parameter).
//!
//! A loaded image occupies device memory in proportion to its size (`GpuState::module_bytes`),
//! charged to the process as overhead: a module in its context's device, a library
//! (context-independent) in every context of the process, present and future, as the driver
//! loads it into each. Unloading, or destroying the context, gives it back.

use crate::types::{Res, err};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicI32;

/// Default and maximum dynamic shared memory (Hopper: 48 KiB default, 227 KiB opt-in).
pub const DEFAULT_MAX_DYNAMIC_SHARED: i32 = 48 * 1024;
/// Opt-in maximum of dynamic shared memory per block.
pub const OPTIN_MAX_SHARED: i32 = 227 * 1024;

/// A kernel entry point.
pub struct Function {
    /// Handle value.
    pub handle: u64,
    /// Entry name.
    pub name: String,
    /// Number of `.param`s.
    pub params: usize,
    /// Size in bytes of each `.param` (kernel parameters are copied by size, e.g. into graph
    /// kernel nodes).
    pub param_sizes: Vec<usize>,
    /// Context (0: context-independent, from a library).
    pub ctx: u64,
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
    pub max_dynamic_shared: AtomicI32,
    /// `CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT`.
    pub carveout: AtomicI32,
}

/// A loaded module or library.
pub struct Module {
    /// Handle value.
    pub handle: u64,
    /// Context (0 for libraries).
    pub ctx: u64,
    /// Whether it is a library (`cuLibraryLoadData`).
    pub library: bool,
    /// Entry name → function handle (for libraries: kernel handle).
    pub entries: HashMap<String, u64>,
    /// Device memory the image occupies in each context it is loaded into.
    pub bytes: u64,
    /// `(context, device)` pairs the image is loaded (and charged) in.
    pub loaded_in: Mutex<Vec<(u64, u32)>>,
}

/// Registry of modules, libraries and functions.
#[derive(Default)]
pub struct Modules {
    /// Modules and libraries by handle.
    pub modules: Mutex<HashMap<u64, Arc<Module>>>,
    /// Functions by handle (library kernels are registered under their kernel handle too).
    pub functions: Mutex<HashMap<u64, Arc<Function>>>,
}

/// An entry point found in PTX: name and parameter count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Name.
    pub name: String,
    /// Parameters.
    pub params: usize,
    /// Size in bytes of each parameter.
    pub param_sizes: Vec<usize>,
}

/// Bytes of one PTX `.param` declaration (`.param .u64 n`, `.param .align 8 .b8 s[16]`); an
/// unknown type counts as 8 bytes.
fn param_size(decl: &str) -> usize {
    let elem = decl
        .split_whitespace()
        .find_map(|t| {
            let t = t.strip_prefix('.')?;
            let bits: usize = t.get(1..)?.parse().ok()?;
            matches!(t.as_bytes()[0], b'u' | b's' | b'b' | b'f').then_some(bits / 8)
        })
        .unwrap_or(8);
    let count = decl
        .find('[')
        .and_then(|i| decl[i + 1..].split(']').next()?.trim().parse().ok())
        .unwrap_or(1usize);
    elem.max(1) * count
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.')
}

/// Parses an image: PTX text yields its `.entry` points; cubin/fatbin images are not supported
/// (`CUDA_ERROR_NOT_SUPPORTED`); anything else is `CUDA_ERROR_INVALID_IMAGE`.
pub fn parse_image(bytes: &[u8]) -> Res<Vec<Entry>> {
    if bytes.starts_with(b"\x7fELF")
        || bytes.starts_with(&0xBA55_ED50u32.to_le_bytes())
        || bytes.starts_with(&0x4662_43B1u32.to_le_bytes())
    {
        return Err(err::NOT_SUPPORTED);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| err::INVALID_IMAGE)?;
    if !text.contains(".version") || !text.contains(".target") {
        return Err(err::INVALID_IMAGE);
    }
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(".entry") {
        let after = &rest[i + ".entry".len()..];
        rest = after;
        if !after.starts_with(|c: char| c.is_whitespace()) {
            continue;
        }
        let name_start = after.trim_start();
        let name: String = name_start.chars().take_while(|&c| is_ident(c)).collect();
        if name.is_empty() {
            return Err(err::INVALID_PTX);
        }
        let sig = &name_start[name.len()..];
        let param_sizes: Vec<usize> = match (sig.trim_start().starts_with('('), sig.find(')')) {
            (true, Some(end)) => sig[..end].split(".param").skip(1).map(param_size).collect(),
            _ => Vec::new(),
        };
        out.push(Entry {
            name,
            params: param_sizes.len(),
            param_sizes,
        });
    }
    Ok(out)
}

impl Modules {
    /// Loads an image: parses it, charges its device memory and registers it. `ctx` is
    /// `Some((context, device))` for a module of that context, `None` for a library (loaded in
    /// every live context of the process). Over the device's capacity →
    /// `CUDA_ERROR_OUT_OF_MEMORY`, nothing loaded or charged.
    pub fn load_image(
        &self,
        p: &crate::driver::Process,
        ctx: Option<(u64, u32)>,
        image: &[u8],
    ) -> Res<u64> {
        let library = ctx.is_none();
        let entries = parse_image(image)?;
        let bytes = p.gpu.module_bytes(image.len() as u64);
        // Held across the charges so that a context created meanwhile is charged exactly once
        // (here or in `context_created`).
        let mut modules = self.modules.lock();
        let targets: Vec<(u64, u32)> = if library {
            p.contexts
                .lock()
                .values()
                .map(|c| (c.handle, c.device))
                .collect()
        } else {
            ctx.into_iter().collect()
        };
        let mut charged = Vec::new();
        for &(c, dev) in &targets {
            if bytes > 0 && p.gpu.charge_overhead(dev, bytes).is_err() {
                for &(_, d) in &charged {
                    p.gpu.uncharge_overhead(d, bytes);
                }
                return Err(err::OUT_OF_MEMORY);
            }
            charged.push((c, dev));
        }
        let m = self.register(p, ctx.map_or(0, |c| c.0), library, entries, bytes, charged);
        let handle = m.handle;
        modules.insert(handle, m);
        Ok(handle)
    }

    /// Loads every library of the process into a new context `ctx` on `device` (charging
    /// each); on failure the charges made here are given back.
    pub fn context_created(&self, p: &crate::driver::Process, ctx: u64, device: u32) -> Res<()> {
        let modules = self.modules.lock();
        let mut done: Vec<&Arc<Module>> = Vec::new();
        for m in modules.values().filter(|m| m.library) {
            let mut loaded = m.loaded_in.lock();
            if loaded.iter().any(|&(c, _)| c == ctx) {
                continue;
            }
            if m.bytes > 0 && p.gpu.charge_overhead(device, m.bytes).is_err() {
                drop(loaded);
                for d in done {
                    d.loaded_in.lock().retain(|&(c, _)| c != ctx);
                    p.gpu.uncharge_overhead(device, d.bytes);
                }
                return Err(err::OUT_OF_MEMORY);
            }
            loaded.push((ctx, device));
            done.push(m);
        }
        Ok(())
    }

    /// Makes a module (or library) with its entries: its functions become visible; the module
    /// itself is inserted by the caller.
    fn register(
        &self,
        p: &crate::driver::Process,
        ctx: u64,
        library: bool,
        entries: Vec<Entry>,
        bytes: u64,
        loaded_in: Vec<(u64, u32)>,
    ) -> Arc<Module> {
        let handle = p.new_handle();
        let mut map = HashMap::new();
        let mut funcs = self.functions.lock();
        for e in entries {
            let h = p.new_handle();
            funcs.insert(
                h,
                Arc::new(Function {
                    handle: h,
                    name: e.name.clone(),
                    params: e.params,
                    param_sizes: e.param_sizes.clone(),
                    ctx,
                    max_dynamic_shared: AtomicI32::new(DEFAULT_MAX_DYNAMIC_SHARED),
                    carveout: AtomicI32::new(-1),
                }),
            );
            map.insert(e.name, h);
        }
        Arc::new(Module {
            handle,
            ctx,
            library,
            entries: map,
            bytes,
            loaded_in: Mutex::new(loaded_in),
        })
    }

    /// Looks up a module or library.
    pub fn module(&self, h: u64, library: bool) -> Res<Arc<Module>> {
        match self.modules.lock().get(&h) {
            Some(m) if m.library == library => Ok(m.clone()),
            _ => Err(err::INVALID_HANDLE),
        }
    }

    /// Unloads a module or library and its functions, giving back its device memory.
    pub fn unload(&self, p: &crate::driver::Process, h: u64, library: bool) -> Res<()> {
        let m = {
            let mut modules = self.modules.lock();
            match modules.get(&h) {
                Some(m) if m.library == library => {}
                _ => return Err(err::INVALID_HANDLE),
            }
            modules.remove(&h).expect("present")
        };
        for (_, dev) in std::mem::take(&mut *m.loaded_in.lock()) {
            p.gpu.uncharge_overhead(dev, m.bytes);
        }
        let mut f = self.functions.lock();
        for fh in m.entries.values() {
            f.remove(fh);
        }
        Ok(())
    }

    /// Looks up a function (or a library kernel used as a function).
    pub fn function(&self, h: u64) -> Res<Arc<Function>> {
        self.functions
            .lock()
            .get(&h)
            .cloned()
            .ok_or(err::INVALID_HANDLE)
    }

    /// Unloads every module of a destroyed context, and the libraries' copies in it.
    pub fn drop_context(&self, p: &crate::driver::Process, ctx: u64) {
        let gone: Vec<u64> = self
            .modules
            .lock()
            .values()
            .filter(|m| m.ctx == ctx && !m.library)
            .map(|m| m.handle)
            .collect();
        for h in gone {
            self.unload(p, h, false).ok();
        }
        for m in self.modules.lock().values().filter(|m| m.library) {
            let mut loaded = m.loaded_in.lock();
            if let Some(i) = loaded.iter().position(|&(c, _)| c == ctx) {
                let (_, dev) = loaded.swap_remove(i);
                p.gpu.uncharge_overhead(dev, m.bytes);
            }
        }
    }
}

/// Reads the image a `cuModuleLoadData`-style call points at: an ELF/fatbin header is recognised
/// by its magic; otherwise the image is NUL-terminated text.
///
/// # Safety
/// `image` is null or points to a valid image (NUL-terminated when it is text).
pub unsafe fn image_bytes<'a>(image: *const std::ffi::c_void) -> Res<&'a [u8]> {
    if image.is_null() {
        return Err(err::INVALID_VALUE);
    }
    // Read up to 4 bytes, stopping at a NUL (the binary magics contain none), so a short text
    // image is never over-read.
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        // SAFETY: bytes before the first NUL of a valid image are readable.
        let b = unsafe { *(image as *const u8).add(n) };
        if b == 0 {
            break;
        }
        head[n] = b;
        n += 1;
    }
    if n == 4
        && (head == *b"\x7fELF"
            || head == 0xBA55_ED50u32.to_le_bytes()
            || head == 0x4662_43B1u32.to_le_bytes())
    {
        // SAFETY: the 4 magic bytes were just read from this address.
        return Ok(unsafe { std::slice::from_raw_parts(image as *const u8, 4) });
    }
    // SAFETY: a text image is NUL-terminated per the API contract.
    Ok(unsafe { std::ffi::CStr::from_ptr(image as *const std::ffi::c_char) }.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries() {
        let ptx = ".version 8.0\n.target sm_90\n.address_size 64\n\
            .visible .entry spin(\n .param .u64 spin_param_0\n)\n{ ret; }\n\
            .visible .entry add_one(.param .u64 a, .param .u32 n) { ret; }\n\
            .func helper() { ret; }\n";
        let e = parse_image(ptx.as_bytes()).unwrap();
        assert_eq!(
            e,
            vec![
                Entry {
                    name: "spin".into(),
                    params: 1,
                    param_sizes: vec![8],
                },
                Entry {
                    name: "add_one".into(),
                    params: 2,
                    param_sizes: vec![8, 4],
                }
            ]
        );
        assert_eq!(
            parse_image(
                b".version 8.0\n.target sm_90\n.entry k(.param .align 8 .b8 s[24], .param .f16 h)\n"
            )
            .unwrap()[0]
            .param_sizes,
            vec![24, 2]
        );
        assert_eq!(parse_image(b"garbage"), Err(err::INVALID_IMAGE));
        assert_eq!(parse_image(b"\x7fELF...."), Err(err::NOT_SUPPORTED));
    }
}
