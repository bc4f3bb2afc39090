//! Builds the hand-written liburing contenders of `bufring bench` (csrc/) when <liburing.h> is
//! installed (Debian: liburing-dev). Without it the bench skips those contenders and says so.
//! Only with the `bench` feature: other builds compile nothing here and need no C compiler.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(have_liburing)");
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "bench")]
    liburing_contenders();
}

#[cfg(feature = "bench")]
fn liburing_contenders() {
    use std::path::Path;

    println!("cargo:rerun-if-changed=csrc/contenders.c");
    println!("cargo:rerun-if-env-changed=BUFRING_NO_LIBURING");
    let found = ["/usr/include", "/usr/local/include"]
        .iter()
        .any(|d| Path::new(d).join("liburing.h").exists());
    if !found || std::env::var_os("BUFRING_NO_LIBURING").is_some() {
        println!("cargo:warning=<liburing.h> not found or BUFRING_NO_LIBURING set: the liburing-c bench contenders are skipped (install liburing-dev to build them)");
        return;
    }
    let ok = cc::Build::new()
        .file("csrc/contenders.c")
        .opt_level(2)
        .flag_if_supported("-std=gnu11")
        .warnings(true)
        .try_compile("bufring_contenders");
    match ok {
        Ok(()) => {
            println!("cargo:rustc-link-lib=uring");
            println!("cargo:rustc-cfg=have_liburing");
        }
        Err(e) => {
            println!("cargo:warning=the liburing-c bench contenders did not compile, skipped: {e}")
        }
    }
}
