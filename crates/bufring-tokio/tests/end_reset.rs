//! How a stream ends: the peer's end of stream ends it after the last byte; a reset (the peer
//! closes with SO_LINGER 0) is one error item, then the end. The adapters (`Bytes`, and
//! `AsyncRead`) carry the same data and the same endings; Unix stream sockets and std streams
//! are taken too.

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use bufring_tokio::{Builder, Uring};
use common::{fill, next, pair, Checker, LIMIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, timeout};

fn uring() -> Option<Uring> {
    common::uring(Builder::default())
}

#[tokio::test(flavor = "current_thread")]
async fn end_of_stream_after_the_data() {
    let Some(uring) = uring() else { return };
    let (mine, mut peer) = pair().await;
    let mut s = uring.recv_stream(mine).unwrap();
    let data = fill(5, 0, 300_000);
    peer.write_all(&data).await.unwrap();
    peer.shutdown().await.unwrap();
    let run = async {
        let mut check = Checker::new(5);
        while let Some(item) = next(&mut s).await {
            check.check(&item.expect("no error before a clean end"));
        }
        assert_eq!(check.pos, data.len() as u64);
        // Fused: the end stays the end.
        assert!(next(&mut s).await.is_none());
        // The write side is still open after the peer's end: reply, then shut it down.
        s.send_bytes(b"bye".to_vec()).await.unwrap();
        s.shutdown_write().await.unwrap();
        let mut back = Vec::new();
        peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"bye");
    };
    timeout(LIMIT, run).await.expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_is_an_error_then_the_end() {
    let Some(uring) = uring() else { return };
    let (mine, peer) = pair().await;
    let mut s = uring.recv_stream(mine).unwrap();
    let mut peer = peer;
    peer.write_all(b"partial").await.unwrap();
    // Let the bytes arrive before the reset (a reset may discard data not yet received).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.buffered() < 7 {
        assert!(tokio::time::Instant::now() < deadline, "nothing received");
        sleep(Duration::from_millis(5)).await;
    }
    peer.set_zero_linger().unwrap();
    drop(peer); // RST
    let run = async {
        let mut got = Vec::new();
        let err = loop {
            match next(&mut s).await {
                Some(Ok(c)) => got.extend_from_slice(&c),
                Some(Err(e)) => break e,
                None => panic!("a reset must surface as an error item"),
            }
        };
        assert_eq!(got, b"partial");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
        assert!(next(&mut s).await.is_none(), "the end follows the error");
        assert!(next(&mut s).await.is_none());
    };
    timeout(LIMIT, run).await.expect("in time");
}

#[tokio::test(flavor = "current_thread")]
async fn bytes_stream_is_zero_copy() {
    let Some(uring) = uring() else { return };
    let (mine, mut peer) = pair().await;
    let mut s = uring.recv_stream(mine).unwrap().into_bytes_stream();
    peer.write_all(&fill(6, 0, 200_000)).await.unwrap();
    peer.shutdown().await.unwrap();
    let run = async {
        let mut check = Checker::new(6);
        let mut kept = Vec::new();
        while let Some(b) = next(&mut s).await {
            let b = b.unwrap();
            check.check(&b);
            kept.push(b);
        }
        assert_eq!(check.pos, 200_000);
        // The `Bytes` outlive the stream and keep their bytes.
        drop(s);
        let mut check = Checker::new(6);
        for b in &kept {
            check.check(b);
        }
    };
    timeout(LIMIT, run).await.expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_read_adapter_copies_in_order() {
    let Some(uring) = uring() else { return };
    let (mine, mut peer) = pair().await;
    let mut r = uring.recv_stream(mine).unwrap().into_async_read();
    let data = fill(7, 0, 1 << 20);
    let writer = tokio::spawn(async move {
        peer.write_all(&data).await.unwrap();
        peer.shutdown().await.unwrap();
        peer
    });
    let run = async {
        // Small reads: chunks are split across them.
        let mut check = Checker::new(7);
        let mut buf = [0u8; 1000];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            check.check(&buf[..n]);
        }
        assert_eq!(check.pos, 1 << 20);
        writer.await.unwrap();
    };
    timeout(LIMIT, run).await.expect("in time");
}

#[tokio::test(flavor = "current_thread")]
async fn async_read_adapter_reports_a_reset() {
    let Some(uring) = uring() else { return };
    let (mine, peer) = pair().await;
    let mut r = uring.recv_stream(mine).unwrap().into_async_read();
    peer.set_zero_linger().unwrap();
    drop(peer);
    let run = async {
        let mut buf = Vec::new();
        let err = r.read_to_end(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
        assert_eq!(r.read(&mut [0u8; 8]).await.unwrap(), 0, "then end of file");
    };
    timeout(LIMIT, run).await.expect("in time");
}

/// A Unix socket pair (tokio's) and a std TCP stream are taken as well.
#[tokio::test(flavor = "current_thread")]
async fn unix_and_std_sockets() {
    let Some(uring) = uring() else { return };
    let (mine, mut peer) = tokio::net::UnixStream::pair().unwrap();
    let mut s = uring.recv_stream(mine).unwrap();
    peer.write_all(b"over unix").await.unwrap();
    drop(peer);
    let mut got = Vec::new();
    while let Some(c) = timeout(LIMIT, next(&mut s)).await.unwrap() {
        got.extend_from_slice(&c.unwrap());
    }
    assert_eq!(got, b"over unix");

    let (mine, mut peer) = pair().await;
    let mine = mine.into_std().unwrap();
    let mut s = uring.recv_stream(mine).unwrap();
    peer.write_all(b"std stream").await.unwrap();
    drop(peer);
    let mut got = Vec::new();
    while let Some(c) = timeout(LIMIT, next(&mut s)).await.unwrap() {
        got.extend_from_slice(&c.unwrap());
    }
    assert_eq!(got, b"std stream");
}

/// `RecvStream::reset` closes at once with a reset: the peer's read fails with ECONNRESET
/// even though a send was still queued.
#[tokio::test(flavor = "current_thread")]
async fn reset_from_our_side() {
    let Some(uring) = uring() else { return };
    let (mine, mut peer) = pair().await;
    let s = uring.recv_stream(mine).unwrap();
    peer.write_all(b"unread").await.unwrap();
    s.send_bytes(vec![7u8; 10]).await.unwrap();
    s.reset();
    let run = async {
        let mut buf = Vec::new();
        match peer.read_to_end(&mut buf).await {
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
            Ok(n) => panic!("a clean end after {n} bytes, not a reset"),
        }
    };
    timeout(LIMIT, run).await.expect("in time");
}
