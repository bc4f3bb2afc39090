//! Runtime shutdown with receives armed, on both flavours: tasks holding streams (and chunks,
//! and clones of the `Uring`) are dropped by the runtime's shutdown; the last `Uring` drop stops
//! and joins the driver thread; nothing panics and nothing leaks. One test in this binary: it
//! counts the process's driver threads.

mod common;

use std::time::Duration;

use bufring_tokio::Builder;
use common::{driver_threads, fill, pair, read_and_hold, LIMIT};
use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;
use tokio::time::timeout;

fn shut_down_with_receives_armed(rt: Runtime) {
    let leaks = bufring::leaks();
    let Some(uring) = common::uring(Builder::default()) else {
        return;
    };
    assert_eq!(driver_threads(), 1);
    // (The timer needs the runtime: made inside it.)
    let peers = rt.block_on(async {
        timeout(LIMIT, async {
            let mut peers = Vec::new();
            for k in 0..16u64 {
                let (mine, mut peer) = pair().await;
                let s = uring.recv_stream(mine).unwrap();
                peer.write_all(&fill(k, 0, 100_000)).await.unwrap();
                // Half of them stop reading early, holding what they got.
                let stop_at = if k % 2 == 0 { 10_000 } else { u64::MAX };
                tokio::spawn(read_and_hold(s, k, stop_at, uring.clone()));
                peers.push(peer);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            peers
        })
        .await
    });
    let peers = peers.expect("set up in time");
    drop(uring); // the tasks hold the last clones
    let start = std::time::Instant::now();
    rt.shutdown_timeout(Duration::from_secs(10));
    eprintln!(
        "runtime shutdown with 16 streams and the driver thread: {:?}",
        start.elapsed()
    );
    assert_eq!(
        driver_threads(),
        0,
        "the last Uring's drop joined the driver thread"
    );
    drop(peers);
    assert_eq!(bufring::leaks(), leaks, "nothing leaked");
}

#[test]
fn runtime_shutdown_with_receives_armed() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    shut_down_with_receives_armed(rt);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    shut_down_with_receives_armed(rt);
}
