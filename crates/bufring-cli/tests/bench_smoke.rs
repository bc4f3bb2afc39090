//! `bufring bench <workload> --json` runs and reports every contender (tiny sizes, one round).

use std::process::Command;
use std::time::{Duration, Instant};

fn uring_available() -> bool {
    match io_uring::IoUring::new(2) {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("BUFRING_REQUIRE_URING").as_deref() == Ok("1") {
                panic!("io_uring unavailable ({e}) but BUFRING_REQUIRE_URING=1");
            }
            eprintln!("skipped: io_uring unavailable ({e})");
            false
        }
    }
}

/// Runs the bench with `args` and returns its JSON lines.
fn bench(args: &[&str]) -> Vec<serde_json::Value> {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_bufring"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run bufring");
    assert!(
        out.status.success(),
        "bufring bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(start.elapsed() < Duration::from_secs(30), "too slow");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Every contender is there, each either measured (positive main figure) or skipped with a
/// reason; `must_run` contenders must have been measured.
fn check(lines: &[serde_json::Value], contenders: &[&str], main: &str, must_run: &[&str]) {
    for c in contenders {
        let mine: Vec<_> = lines.iter().filter(|l| l["contender"] == *c).collect();
        assert!(!mine.is_empty(), "{c} missing from {lines:#?}");
        if let Some(why) = mine.iter().find_map(|l| l["skipped"].as_str()) {
            assert!(!must_run.contains(c), "{c} skipped: {why}");
            continue;
        }
        let fig = mine
            .iter()
            .find(|l| l["figure"] == main)
            .unwrap_or_else(|| panic!("{c} has no {main}"));
        assert!(fig["median"].as_f64().unwrap() > 0.0, "{fig}");
        assert_eq!(fig["rounds"], 1);
    }
}

#[test]
fn stream_reports_every_contender() {
    if !uring_available() {
        return;
    }
    let lines = bench(&["stream", "--bytes", "4M", "--conns", "1", "--rounds", "1"]);
    let ours = [
        "read-loop",
        "tokio",
        "uring-fixed",
        "pool",
        "pool-inc-64K",
        "pool-inc-256K",
        "pool-inc-1M",
        "pool-inc-bundle-256K",
        "pool-emulated-256K",
    ];
    let c = [
        "liburing-c",
        "liburing-c-inc-64K",
        "liburing-c-inc-256K",
        "liburing-c-inc-1M",
    ];
    check(&lines, &ours, "gbps", &ours);
    check(&lines, &c, "gbps", &[]);
    let pool = lines
        .iter()
        .find(|l| l["contender"] == "pool" && l["figure"] == "gbps")
        .unwrap();
    assert_eq!(pool["reference"], "read-loop");
    assert!(pool["ratio"].as_f64().unwrap() > 0.0);
}

#[test]
fn fanin_reports_every_contender() {
    if !uring_available() {
        return;
    }
    let lines = bench(&[
        "fanin",
        "--conns",
        "64",
        "--messages",
        "640",
        "--rounds",
        "1",
    ]);
    let all = [
        "tokio",
        "tokio-bufring",
        "uring-fixed",
        "pool",
        "pool-inc",
        "driver",
        "driver-inc",
    ];
    check(&lines, &all, "msgs_per_s", &all);
    let util = lines
        .iter()
        .find(|l| l["contender"] == "pool-inc" && l["figure"] == "utilization")
        .expect("pool-inc utilization");
    assert!(util["median"].as_f64().unwrap() > 0.0);
}

#[test]
fn rr_reports_every_contender() {
    if !uring_available() {
        return;
    }
    let lines = bench(&["rr", "--conns", "16", "--secs", "0.2", "--rounds", "1"]);
    let all = ["tokio", "tokio-bufring"];
    check(&lines, &all, "req_per_s", &all);
    for figure in ["p50_us", "p99_us", "server_cpu_us_per_req"] {
        let f = lines
            .iter()
            .find(|l| l["contender"] == "tokio-bufring" && l["figure"] == figure)
            .unwrap_or_else(|| panic!("tokio-bufring {figure}"));
        assert!(f["median"].as_f64().unwrap() > 0.0, "{f}");
    }
}

#[test]
fn hotpath_reports_every_contender() {
    if !uring_available() {
        return;
    }
    let lines = bench(&["hotpath", "--completions", "20000", "--rounds", "1"]);
    check(
        &lines,
        &["pool", "pool-inc"],
        "ns_per_completion",
        &["pool", "pool-inc"],
    );
    check(
        &lines,
        &["liburing-c", "liburing-c-inc"],
        "ns_per_completion",
        &[],
    );
}
