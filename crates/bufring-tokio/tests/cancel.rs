//! Cancellation: a stream dropped mid-transfer (and a task aborted while it waits on one)
//! closes its socket and gives every buffer back; a stream that outlives its `Uring` ends with
//! an error item. Nothing leaks. Each runs with the driver thread and in the runtime
//! (`build_local`); the `_in_the_runtime` tests, and the runtime dropped with receives armed,
//! also run under valgrind's memcheck (scripts/valgrind.sh): no driver thread blocks in
//! `io_uring_enter` there.

mod common;

use std::time::Duration;

use bufring_tokio::{Builder, Uring};
use common::{
    current_thread, expect_ended_by_driver, fill, in_the_runtime, local_uring, multi_thread, next,
    pair, read_and_hold, with_driver_thread, Checker, LIMIT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, timeout, Instant};

/// Waits (bounded) until the driver has no stream, no socket and no chunk out.
async fn settled(uring: &Uring) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = uring.stats().await.unwrap();
        if s.streams == 0 && s.driver.sockets == 0 && s.pool.with_app == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "not settled: {s:?}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// An echo round trip on a fresh stream: the `Uring` still works.
async fn still_works(uring: &Uring) {
    let (mine, mut peer) = pair().await;
    let mut s = uring.recv_stream(mine).unwrap();
    peer.write_all(b"still here").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 10 {
        let c = next(&mut s).await.unwrap().unwrap();
        got.extend_from_slice(&c);
        s.send(c).await.unwrap();
    }
    assert_eq!(got, b"still here");
    let mut back = [0u8; 10];
    peer.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"still here");
}

async fn drop_mid_stream(uring: Uring) {
    let leaks = bufring::leaks();
    let (mine, mut peer) = pair().await;
    let mut s = uring.recv_stream(mine).unwrap();
    const TOTAL: usize = 64 << 20;
    let writer = tokio::spawn(async move {
        let mut at = 0;
        while at < TOTAL {
            let n = (256 * 1024).min(TOTAL - at);
            if peer.write_all(&fill(3, at as u64, n)).await.is_err() {
                return at; // the reset that follows the close
            }
            at += n;
        }
        at
    });
    let mut check = Checker::new(3);
    while check.pos < 1 << 20 {
        check.check(&next(&mut s).await.unwrap().unwrap());
    }
    // Holds a chunk past the stream's drop: it stays valid, and gives its buffer back later.
    let held = next(&mut s).await.unwrap().unwrap();
    drop(s);
    check.check(&held);
    drop(held);
    let written = timeout(Duration::from_secs(10), writer)
        .await
        .expect("the writer sees the close")
        .unwrap();
    assert!(written < TOTAL, "the peer's writes failed after the close");
    settled(&uring).await;
    still_works(&uring).await;
    settled(&uring).await;
    drop(uring);
    assert_eq!(bufring::leaks(), leaks);
}

#[test]
fn drop_mid_stream_multi_thread() {
    with_driver_thread(multi_thread(), Builder::default(), drop_mid_stream);
}

#[test]
fn drop_mid_stream_current_thread() {
    with_driver_thread(current_thread(), Builder::default(), drop_mid_stream);
}

#[test]
fn drop_mid_stream_in_the_runtime() {
    in_the_runtime(Builder::default(), drop_mid_stream);
}

/// Tasks waiting on their streams (receives armed, nothing arriving) are aborted: their
/// streams drop inside the runtime and the driver closes the sockets; the peers see the end.
#[test]
fn abort_waiting_tasks() {
    with_driver_thread(multi_thread(), Builder::default(), abort_waiting);
}

#[test]
fn abort_waiting_tasks_in_the_runtime() {
    in_the_runtime(Builder::default(), abort_waiting);
}

async fn abort_waiting(uring: Uring) {
    let leaks = bufring::leaks();
    let mut peers = Vec::new();
    let mut tasks = Vec::new();
    for k in 0..16u64 {
        let (mine, mut peer) = pair().await;
        let mut s = uring.recv_stream(mine).unwrap();
        peer.write_all(&fill(k, 0, 1000)).await.unwrap();
        peers.push(peer);
        tasks.push(tokio::spawn(async move {
            let mut check = Checker::new(k);
            while let Some(item) = next(&mut s).await {
                check.check(&item.unwrap());
            }
            unreachable!("the peer never ends the stream");
        }));
    }
    sleep(Duration::from_millis(50)).await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        assert!(t.await.unwrap_err().is_cancelled());
    }
    for mut p in peers {
        let mut buf = [0u8; 16];
        let n = timeout(Duration::from_secs(10), p.read(&mut buf))
            .await
            .expect("the peer sees the close")
            .unwrap_or(0);
        assert_eq!(n, 0, "end of stream (or a reset) at the peer");
    }
    settled(&uring).await;
    drop(uring);
    assert_eq!(bufring::leaks(), leaks);
}

/// A stream that outlives the last `Uring`: what was received is still there, then an error
/// item (ConnectionAborted), then the end; sends fail.
#[tokio::test(flavor = "current_thread")]
async fn stream_outlives_uring() {
    timeout(LIMIT, outlives()).await.expect("in time");
}

async fn outlives() {
    let Some(uring) = common::uring(Builder::default()) else {
        return;
    };
    let leaks = bufring::leaks();
    let (mine, mut peer) = pair().await;
    let mut s = uring.recv_stream(mine).unwrap();
    peer.write_all(b"before").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.buffered() < 6 {
        assert!(Instant::now() < deadline, "nothing received");
        sleep(Duration::from_millis(5)).await;
    }
    drop(uring); // joins the driver thread
                 // The driver closed the socket when it stopped.
    expect_ended_by_driver(&mut s, &mut peer, b"before").await;
    drop(s);
    assert_eq!(bufring::leaks(), leaks);
}

/// The runtime goes away with receives armed in the in-runtime mode: 16 stream tasks (half of
/// them holding the chunks they took, half still reading) and a datagram socket's task, all
/// holding clones of the `Uring`; then the `LocalSet` (driver task included) and the runtime
/// are dropped. The driver cancels its requests and waits for them before its memory goes:
/// nothing leaks, and the peers see their connections end.
#[test]
fn runtime_dropped_with_receives_armed_in_the_runtime() {
    let leaks = bufring::leaks();
    let rt = current_thread();
    let local = tokio::task::LocalSet::new();
    let peers = local.block_on(&rt, async {
        let (uring, driver) = local_uring(Builder::default())?;
        tokio::task::spawn_local(driver);
        let mut peers = Vec::new();
        for k in 0..16u64 {
            let (mine, mut peer) = pair().await;
            let s = uring.recv_stream(mine).unwrap();
            peer.write_all(&fill(k, 0, 100_000)).await.unwrap();
            let stop_at = if k % 2 == 0 { 10_000 } else { u64::MAX };
            tokio::task::spawn_local(read_and_hold(s, k, stop_at, uring.clone()));
            peers.push(peer);
        }
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = udp.local_addr().unwrap();
        let mut dgrams = uring.datagram_socket(udp).unwrap();
        let keep = uring.clone();
        tokio::task::spawn_local(async move {
            let _keep = keep;
            let _first = dgrams.recv().await;
            std::future::pending::<()>().await;
        });
        let sender = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sender.send_to(b"one datagram", to).await.unwrap();
        sleep(Duration::from_millis(100)).await;
        drop(uring); // the tasks hold the last clones
        Some(peers)
    });
    let Some(peers) = peers else {
        return;
    };
    drop(local);
    drop(rt);
    assert_eq!(bufring::leaks(), leaks, "nothing leaked");
    for p in peers {
        let mut p = p.into_std().unwrap();
        p.set_nonblocking(false).unwrap();
        p.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        let n = std::io::Read::read(&mut p, &mut buf).unwrap_or(0);
        assert_eq!(n, 0, "end of stream (or a reset) at the peer");
    }
}
