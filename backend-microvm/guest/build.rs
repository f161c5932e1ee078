//! Links the image with `link.ld`. Declared here rather than in the outer build's flags so that
//! cargo relinks the image when only the script changes.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
}
