//! Backpressure: a consumer that stops reading holds a bounded amount (its shared queue at most
//! the stream limit, the driver's queue at most its quota plus one batch), its peer's writes
//! stall, and another stream on the same `Uring` keeps flowing. When the consumer reads again,
//! every byte arrives intact, including those spilled to the heap while it was idle.

mod common;

use std::time::Duration;

use bufring::driver::DriverBuilder;
use bufring_tokio::Uring;
use common::{fill, next, pair, small_buffer_pair, Checker, LIMIT};
use tokio::io::AsyncWriteExt;
use tokio::time::{sleep, timeout, Instant};

const STREAM_LIMIT: usize = 64 * 1024;
const QUOTA_CEILING: usize = 128 * 1024;
const BUF_LEN: usize = 16 * 1024;
const BUFFERS: usize = 64;

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

async fn run() {
    let b = Uring::builder()
        .buffers(BUFFERS)
        .buf_len(BUF_LEN)
        .stream_limit(STREAM_LIMIT)
        .idle_spill(Some(Duration::from_millis(20)))
        .driver(DriverBuilder::default().recv_quota(32 * 1024, QUOTA_CEILING));
    let Some(uring) = common::uring(b) else {
        return;
    };
    let leaks = bufring::leaks();

    // The stalled stream: its peer writes far more than the bounds, in a task of its own.
    const STALLED_TOTAL: usize = 16 << 20;
    // Small fixed kernel buffers on the stalled connection: autotuned ones may take in the
    // whole 16 MiB where tcp_rmem allows 32 MiB (seen on a 6.18 machine: the writer finished).
    let (mut peer, mine) = small_buffer_pair().await;
    let mut stalled = uring.recv_stream(mine).unwrap();
    let writer = tokio::spawn(async move {
        let mut at = 0;
        while at < STALLED_TOTAL {
            let n = (64 * 1024).min(STALLED_TOTAL - at);
            peer.write_all(&fill(1, at as u64, n)).await.unwrap();
            at += n;
        }
        peer.shutdown().await.unwrap();
    });

    // The flowing stream: 8 MiB through while the other stays stalled, bounds checked as it goes.
    const FLOW_TOTAL: usize = 8 << 20;
    let (mine, mut peer) = pair().await;
    let mut flowing = uring.recv_stream(mine).unwrap();
    let feeder = tokio::spawn(async move {
        let mut at = 0;
        while at < FLOW_TOTAL {
            let n = (100_000).min(FLOW_TOTAL - at);
            peer.write_all(&fill(2, at as u64, n)).await.unwrap();
            at += n;
        }
        peer.shutdown().await.unwrap();
    });
    let mut check = Checker::new(2);
    let mut max_buffered = 0;
    let mut max_driver = 0;
    let mut items = 0u64;
    while let Some(item) = next(&mut flowing).await {
        check.check(&item.unwrap());
        items += 1;
        if items % 32 == 0 {
            max_buffered = max_buffered.max(stalled.buffered());
            max_driver = max_driver.max(stalled.driver_queued().await.unwrap());
        }
    }
    assert_eq!(
        check.pos, FLOW_TOTAL as u64,
        "the other stream flowed to its end"
    );
    feeder.await.unwrap();

    // The stalled one is still stalled: its peer could not write everything.
    sleep(Duration::from_millis(100)).await;
    assert!(
        !writer.is_finished(),
        "the stalled peer's writes should block"
    );
    let buffered = stalled.buffered();
    let in_driver = stalled.driver_queued().await.unwrap();
    max_buffered = max_buffered.max(buffered);
    max_driver = max_driver.max(in_driver);
    assert!(buffered > 0, "the stalled stream did receive");
    assert!(
        max_buffered <= STREAM_LIMIT,
        "shared queue {max_buffered} over the limit {STREAM_LIMIT}"
    );
    // Kernels with a byte limit on multishot receives (6.17) stop at the quota (a completion
    // may end one buffer's piece past it); older ones stop it with a cancel, which one burst
    // can overshoot: at most the pool.
    let overshoot = if kernel_at_least(6, 17) {
        BUF_LEN
    } else {
        BUFFERS * BUF_LEN
    };
    assert!(
        max_driver <= QUOTA_CEILING + overshoot,
        "driver queue {max_driver} over the quota {QUOTA_CEILING} (+ {overshoot})"
    );
    let stats = uring.stats().await.unwrap();
    assert!(
        stats.idle_spilled_bytes > 0,
        "the idle stream's queue went to the heap: {stats:?}"
    );
    eprintln!(
        "stalled: shared queue max {max_buffered}, driver queue max {max_driver}, spilled {} bytes",
        stats.idle_spilled_bytes
    );

    // Reading again: everything arrives, in order, and the peer's writes finish.
    let mut check = Checker::new(1);
    while let Some(item) = next(&mut stalled).await {
        check.check(&item.unwrap());
    }
    assert_eq!(
        check.pos, STALLED_TOTAL as u64,
        "the stalled stream lost nothing"
    );
    writer.await.unwrap();
    drop((stalled, flowing, uring));
    assert_eq!(bufring::leaks(), leaks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_consumer_is_bounded_and_others_flow() {
    // Bounded even if something stalls for good.
    let start = Instant::now();
    timeout(LIMIT, run()).await.expect("in time");
    eprintln!("took {:?}", start.elapsed());
}

#[tokio::test(flavor = "current_thread")]
async fn stalled_consumer_is_bounded_current_thread() {
    timeout(LIMIT, run()).await.expect("in time");
}

/// The smallest stream limit (1 byte: one chunk at a time) still moves everything.
#[tokio::test(flavor = "current_thread")]
async fn one_byte_stream_limit_still_flows() {
    let Some(uring) = common::uring(Uring::builder().stream_limit(1)) else {
        return;
    };
    let (mine, mut peer) = pair().await;
    let mut s = uring.recv_stream(mine).unwrap();
    let writer = tokio::spawn(async move {
        peer.write_all(&fill(9, 0, 2 << 20)).await.unwrap();
        peer.shutdown().await.unwrap();
    });
    let run = async {
        let mut check = Checker::new(9);
        while let Some(item) = next(&mut s).await {
            check.check(&item.unwrap());
            assert!(s.buffered() <= 64 * 1024, "one chunk at most");
        }
        assert_eq!(check.pos, 2 << 20);
        writer.await.unwrap();
    };
    timeout(LIMIT, run).await.expect("in time");
}
