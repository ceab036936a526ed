//! Link flags of the fake NVML: the soname real programs `dlopen` (`libnvidia-ml.so.1`), and
//! `-Bsymbolic` so the library's own references never bind to an interposer's exports.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
    println!("cargo:rerun-if-changed=build.rs");
}
