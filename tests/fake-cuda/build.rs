//! Links the fake driver as `libcuda.so.1` and binds its own symbol references locally
//! (`-Bsymbolic`), so an LD_PRELOADed shim never replaces the fake's internal calls or the
//! addresses handed out by `cuGetProcAddress`.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
    println!("cargo:rerun-if-changed=build.rs");
}
