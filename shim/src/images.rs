//! The size of a module image handed to the driver by pointer (`cuModuleLoadData*`,
//! `cuModuleLoadFatBinary`, `cuLibraryLoadData`): what a load reserves before it runs (the
//! loaded code's device memory is about the image's size; the measurement after the load
//! settles it). The driver takes four kinds, told apart by their first bytes:
//! - a cubin (ELF): up to the end of its section and program header tables (cubins end with
//!   the section headers), read from the ELF header alone;
//! - a fatbin (magic `0xBA55ED50`): its header's size plus the size it declares;
//! - a fatbin wrapper (`__fatBinC_Wrapper_t`, magic `0x466243B1`): the fatbin it points to;
//! - PTX: NUL-terminated text.
//!
//! Only headers are read (besides PTX's terminator, which the driver's contract guarantees).

use std::ffi::{CStr, c_char, c_void};

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const FATBIN_MAGIC: u32 = 0xBA55_ED50;
const FATBIN_WRAPPER_MAGIC: u32 = 0x4662_43B1;

/// Bytes the image at `image` occupies (0 for a null pointer).
///
/// # Safety
/// `image` is null or a module image of one of the kinds above, readable as the driver reads
/// it (the C API's contract for the call it is passed to).
pub(crate) unsafe fn image_size(image: *const c_void) -> u64 {
    if image.is_null() {
        return 0;
    }
    let bytes = image.cast::<u8>();
    let mut head = [0u8; 4];
    for (i, b) in head.iter_mut().enumerate() {
        // SAFETY: byte `i` is readable: the bytes before it are not NUL, so this is no PTX text
        // that ended already, and the ELF/fatbin magics are 4 bytes.
        *b = unsafe { *bytes.add(i) };
        if *b == 0 {
            // PTX this short (or no image the driver takes: it will say so).
            return i as u64;
        }
    }
    let word = u32::from_le_bytes(head);
    if head == ELF_MAGIC {
        // SAFETY: an ELF image has its (64-byte ELF64 / 52-byte ELF32) header.
        return unsafe { elf_size(bytes) };
    }
    if word == FATBIN_MAGIC {
        // SAFETY: a fatbin has its 16-byte header.
        return unsafe { fatbin_size(bytes) };
    }
    if word == FATBIN_WRAPPER_MAGIC {
        // SAFETY: the wrapper: magic, version (4 bytes each), then the fatbin's address.
        let data = unsafe { std::ptr::read_unaligned(bytes.add(8).cast::<*const u8>()) };
        return if data.is_null() {
            0
        } else {
            // SAFETY: the wrapper points to a fatbin.
            unsafe { fatbin_size(data) }
        };
    }
    // SAFETY: PTX text, NUL-terminated (the driver reads it whole too).
    unsafe { CStr::from_ptr(bytes.cast::<c_char>()) }
        .to_bytes()
        .len() as u64
}

/// # Safety
/// `fatbin` points to a fatbin header (16 bytes).
unsafe fn fatbin_size(fatbin: *const u8) -> u64 {
    // SAFETY: the header: magic (4), version (2), header size (2), fat size (8).
    let (header, fat) = unsafe {
        (
            std::ptr::read_unaligned(fatbin.add(6).cast::<u16>()),
            std::ptr::read_unaligned(fatbin.add(8).cast::<u64>()),
        )
    };
    u64::from(u16::from_le(header)).saturating_add(u64::from_le(fat))
}

/// # Safety
/// `elf` points to an ELF header.
unsafe fn elf_size(elf: *const u8) -> u64 {
    // SAFETY: EI_CLASS is byte 4 of the identification, present in every ELF header.
    let class = unsafe { *elf.add(4) };
    let read16 = |off: usize| {
        // SAFETY: `off` is within the header of this class (offsets from the ELF spec).
        u64::from(u16::from_le(unsafe {
            std::ptr::read_unaligned(elf.add(off).cast::<u16>())
        }))
    };
    let read32 = |off: usize| {
        // SAFETY: as above.
        u64::from(u32::from_le(unsafe {
            std::ptr::read_unaligned(elf.add(off).cast::<u32>())
        }))
    };
    let read64 = |off: usize| {
        // SAFETY: as above.
        u64::from_le(unsafe { std::ptr::read_unaligned(elf.add(off).cast::<u64>()) })
    };
    // (phoff, shoff, phentsize, phnum, shentsize, shnum)
    let (phoff, shoff, fields) = match class {
        2 => (read64(0x20), read64(0x28), 0x36),
        1 => (read32(0x1C), read32(0x20), 0x2A),
        _ => return 0,
    };
    let (phentsize, phnum, shentsize, shnum) = (
        read16(fields),
        read16(fields + 2),
        read16(fields + 4),
        read16(fields + 6),
    );
    let header = if class == 2 { 64 } else { 52 };
    let ph_end = phoff.saturating_add(phentsize.saturating_mul(phnum));
    let sh_end = shoff.saturating_add(shentsize.saturating_mul(shnum));
    ph_end.max(sh_end).max(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_of_each_kind() {
        // SAFETY: each buffer below is an image of its kind.
        unsafe {
            assert_eq!(image_size(std::ptr::null()), 0);
            let ptx = c".version 8.0\n.target sm_90\n";
            assert_eq!(image_size(ptx.as_ptr().cast()), ptx.to_bytes().len() as u64);
            assert_eq!(image_size(c"".as_ptr().cast()), 0);
            assert_eq!(image_size(c"ab".as_ptr().cast()), 2);

            // An ELF64 cubin: program headers at 64 (2 × 56), sections at 4096 (10 × 64).
            let mut elf = [0u8; 64];
            elf[..4].copy_from_slice(&ELF_MAGIC);
            elf[4] = 2;
            elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
            elf[0x28..0x30].copy_from_slice(&4096u64.to_le_bytes());
            elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
            elf[0x38..0x3A].copy_from_slice(&2u16.to_le_bytes());
            elf[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
            elf[0x3C..0x3E].copy_from_slice(&10u16.to_le_bytes());
            assert_eq!(image_size(elf.as_ptr().cast()), 4096 + 640);

            // A fatbin of 16 + 1000 bytes, directly and through a wrapper.
            let mut fat = [0u8; 16];
            fat[..4].copy_from_slice(&FATBIN_MAGIC.to_le_bytes());
            fat[6..8].copy_from_slice(&16u16.to_le_bytes());
            fat[8..16].copy_from_slice(&1000u64.to_le_bytes());
            assert_eq!(image_size(fat.as_ptr().cast()), 1016);
            let mut wrapper = [0u64; 3];
            wrapper[0] = u64::from(FATBIN_WRAPPER_MAGIC) | (1 << 32);
            wrapper[1] = fat.as_ptr() as u64;
            assert_eq!(image_size(wrapper.as_ptr().cast()), 1016);
        }
    }
}
