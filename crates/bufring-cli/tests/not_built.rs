//! A binary built without a subcommand's feature names the feature instead of failing to parse
//! (the default build, as `cargo run --release -- demo` makes it). CI runs this file with
//! default features: `cargo test -p bufring-cli --test not_built`.

#![allow(dead_code)]

use std::process::Command;

/// Runs `bufring args..` and returns its exit success and stderr.
fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bufring"))
        .args(args)
        .output()
        .expect("run bufring");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[cfg(not(feature = "bench"))]
#[test]
fn bench_names_its_feature() {
    let (ok, err) = run(&["bench", "stream", "--quick", "--json"]);
    assert!(!ok, "bench without the feature must fail");
    assert!(
        err.contains("`bench` feature") && err.contains("--features bench"),
        "message names the feature: {err}"
    );
}

#[cfg(not(feature = "proxy-tokio"))]
#[test]
fn proxy_tokio_names_its_feature() {
    let (ok, err) = run(&[
        "proxy-tokio",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:9",
    ]);
    assert!(!ok, "proxy-tokio without the feature must fail");
    assert!(
        err.contains("`proxy-tokio` feature") && err.contains("--features proxy-tokio"),
        "message names the feature: {err}"
    );
}
