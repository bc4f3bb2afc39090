//! Sends: a send's future resolves at once under the stream limit and waits above it until
//! the peer has read enough (bytes intact and in order); a send that fails later (the peer
//! reset) makes the later sends fail; sends fail at once after `shutdown_write` and, for a
//! `StreamSender`, once its stream is dropped.

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use bufring_tokio::{Builder, Uring};
use common::{fill, pair, small_buffer_pair, Checker, LIMIT};
use tokio::io::AsyncReadExt;
use tokio::time::{sleep, timeout, Instant};

const STREAM_LIMIT: usize = 64 * 1024;

fn uring() -> Option<Uring> {
    common::uring(Builder::default().stream_limit(STREAM_LIMIT))
}

/// A peer that does not read holds the sender back once the kernel's socket buffers and the
/// stream limit are full; when it reads, every byte arrives in order and the sends go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_waits_above_the_limit_until_the_peer_reads() {
    let Some(uring) = uring() else { return };
    let (mine, mut peer) = small_buffer_pair().await;
    let s = uring.recv_stream(mine).unwrap();
    const PIECE: usize = 16 * 1024;
    const TOTAL: usize = 16 << 20;
    let run = async {
        let sender = s.sender();
        let send_all = tokio::spawn(async move {
            let mut waited = 0u32;
            for k in 0..TOTAL / PIECE {
                let f = sender.send_bytes(fill(9, (k * PIECE) as u64, PIECE));
                let started = Instant::now();
                f.await.unwrap();
                if started.elapsed() > Duration::from_millis(50) {
                    waited += 1;
                }
            }
            sender.shutdown_write().await.unwrap();
            waited
        });
        // Nobody reads for a while: the sender must stop before it has queued everything.
        sleep(Duration::from_millis(300)).await;
        assert!(!send_all.is_finished(), "16 MiB queued with nobody reading");
        let mut check = Checker::new(9);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = peer.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            check.check(&buf[..n]);
        }
        assert_eq!(check.pos, TOTAL as u64);
        let waited = send_all.await.unwrap();
        assert!(waited >= 1, "no send future ever waited for room");
    };
    timeout(LIMIT, run).await.expect("in time");
}

/// After the peer resets, a send fails in the kernel; the sends after it fail with that error
/// (bounded: a few hundred attempts, each waiting a little).
#[tokio::test(flavor = "current_thread")]
async fn a_failed_send_fails_the_later_ones() {
    let Some(uring) = uring() else { return };
    let (mine, peer) = pair().await;
    let s = uring.recv_stream(mine).unwrap();
    peer.set_zero_linger().unwrap();
    drop(peer); // RST
    let run = async {
        for _ in 0..500 {
            if let Err(e) = s.send_bytes(vec![1u8; 1024]).await {
                assert!(
                    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
                    "{e}"
                );
                // And it stays failed.
                assert!(s.send_bytes(vec![1u8; 1]).await.is_err());
                return;
            }
            sleep(Duration::from_millis(10)).await;
        }
        panic!("sends to a reset peer kept succeeding for 5 s");
    };
    timeout(LIMIT, run).await.expect("in time");
}

/// `shutdown_write` makes later sends fail at once (BrokenPipe); what was queued before it
/// still arrives. A `StreamSender` fails with NotConnected once its stream is dropped.
#[tokio::test(flavor = "current_thread")]
async fn sends_after_shutdown_and_after_drop_fail() {
    let Some(uring) = uring() else { return };
    let (mine, mut peer) = pair().await;
    let s = uring.recv_stream(mine).unwrap();
    let run = async {
        s.send_bytes(b"last words".to_vec()).await.unwrap();
        s.shutdown_write().await.unwrap();
        let e = s.send_bytes(b"more".to_vec()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BrokenPipe, "{e}");
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");

        let (mine, _peer2) = pair().await;
        let s2 = uring.recv_stream(mine).unwrap();
        let sender = s2.sender();
        sender.send_bytes(b"ok".to_vec()).await.unwrap();
        drop(s2);
        let e = sender.send_bytes(b"late".to_vec()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotConnected, "{e}");
    };
    timeout(LIMIT, run).await.expect("in time");
}
