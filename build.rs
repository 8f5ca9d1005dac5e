//! Build script. The CUDA backend (next) compiles `kernels/*.cu` into one fatbin here with nvcc
//! and turns `kernels/params.h` into Rust with bindgen; the CPU-only build needs nothing.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
}
