//! The binary as a user runs it: `bufring probe --json` and `bufring demo --json`.

use std::process::Command;

fn uring_available() -> bool {
    match io_uring::IoUring::new(4) {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("BUFRING_REQUIRE_URING").as_deref() == Ok("1") {
                panic!("io_uring unavailable ({e}) and BUFRING_REQUIRE_URING=1");
            }
            eprintln!("SKIPPED: io_uring unavailable here ({e})");
            false
        }
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bufring"))
        .args(args)
        .output()
        .expect("run bufring");
    assert!(
        out.status.success(),
        "bufring {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn probe_json_reports_every_feature() {
    if !uring_available() {
        return;
    }
    let out = run(&["probe", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for key in [
        "buffer_ring",
        "kernel_allocated_ring",
        "incremental",
        "min_left",
        "pbuf_status",
        "bundles",
        "read_multishot",
    ] {
        assert!(v[key].is_boolean(), "{key} missing in {out}");
    }
    assert!(v["kernel"].is_string());
    assert!(
        out.trim_start().starts_with("{\"kernel\""),
        "kernel first: {out}"
    );
}

#[test]
fn demo_json_prints_the_commit_example() {
    if !uring_available() {
        return;
    }
    let probe: serde_json::Value = serde_json::from_str(run(&["probe", "--json"]).trim()).unwrap();
    if probe["incremental"] != true {
        eprintln!("SKIPPED: no incremental consumption on this kernel");
        return;
    }
    let out = run(&["demo", "--json"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            r#"{"res":4096,"bid":0,"offset":0,"buf_more":true}"#,
            r#"{"res":8192,"bid":0,"offset":4096,"buf_more":true}"#,
            r#"{"res":20480,"bid":0,"offset":12288,"buf_more":false}"#,
            r#"{"res":4096,"bid":1,"offset":0,"buf_more":true}"#,
        ]
    );
}

#[test]
fn demo_classic_takes_a_buffer_per_completion() {
    if !uring_available() {
        return;
    }
    let out = run(&["demo", "--json", "--no-incremental"]);
    let v: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(v.len(), 4);
    assert!(v.iter().all(|c| c["offset"] == 0 && c["buf_more"] == false));
}

#[test]
fn demo_text_explains_each_completion() {
    if !uring_available() {
        return;
    }
    let out = run(&["demo"]);
    assert!(out.contains("F_BUF_MORE"), "{out}");
    assert!(out.contains("posted back to the ring"), "{out}");
}
