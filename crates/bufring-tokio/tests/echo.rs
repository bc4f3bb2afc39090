//! Many connections echoing verified data through one `Uring`, on both runtime flavours: the
//! server side receives with `RecvStream` and echoes each chunk back through the driver (no
//! copy); tokio clients upload a pattern while they download and check the echo.

mod common;

use std::time::Duration;

use bufring_tokio::{Builder, Uring};
use common::{echo_client, echo_stream, LIMIT};
use tokio::net::TcpListener;

const CONNS: u64 = 64;
const BYTES: usize = 256 * 1024;

/// Accepts `CONNS` connections and echoes each with a task of its own.
async fn server(uring: Uring, listener: TcpListener) -> Vec<tokio::task::JoinHandle<u64>> {
    let mut tasks = Vec::new();
    for _ in 0..CONNS {
        let (tcp, _) = listener.accept().await.unwrap();
        let stream = uring.recv_stream(tcp).unwrap();
        tasks.push(tokio::spawn(echo_stream(stream)));
    }
    tasks
}

async fn echo_many(uring: Uring) {
    let leaks = bufring::leaks();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let run = async {
        let clients: Vec<_> = (0..CONNS)
            .map(|seed| tokio::spawn(echo_client(addr, seed, BYTES)))
            .collect();
        let servers = server(uring.clone(), listener).await;
        for c in clients {
            assert_eq!(c.await.unwrap(), BYTES as u64, "a client got all its echo");
        }
        for s in servers {
            assert_eq!(
                s.await.unwrap(),
                BYTES as u64,
                "a server task echoed it all"
            );
        }
    };
    tokio::time::timeout(LIMIT, run)
        .await
        .expect("echo in time");
    // Every stream was dropped: the driver closes their sockets (bounded wait).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = uring.stats().await.unwrap();
        if s.streams == 0 && s.driver.sockets == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sockets left: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(uring);
    assert_eq!(bufring::leaks(), leaks, "nothing leaked");
}

#[tokio::test(flavor = "current_thread")]
async fn echo_64_current_thread() {
    let Some(uring) = common::uring(Builder::default()) else {
        return;
    };
    echo_many(uring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_64_multi_thread() {
    let Some(uring) = common::uring(Builder::default()) else {
        return;
    };
    echo_many(uring).await;
}

/// A small pool and a small stream limit: 64 connections share 16 buffers of 16 KiB, so the
/// quotas, the waits for buffers and the spills all take part, and the data stays intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_64_tiny_pool() {
    let b = Uring::builder()
        .buffers(16)
        .buf_len(16 * 1024)
        .stream_limit(32 * 1024);
    let Some(uring) = common::uring(b) else {
        return;
    };
    echo_many(uring).await;
}

/// The paths of older kernels on this one: incremental consumption emulated by bufring (what
/// `Auto` picks before 6.12) and a ring without DEFER_TASKRUN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_64_emulated_incremental_no_defer() {
    let b = Uring::builder()
        .incremental(bufring::Incremental::Emulated)
        .driver(bufring::driver::DriverBuilder::default().defer_taskrun(false));
    let Some(uring) = common::uring(b) else {
        return;
    };
    echo_many(uring).await;
}

/// Whole buffers per completion (no incremental consumption), on a current-thread runtime.
#[tokio::test(flavor = "current_thread")]
async fn echo_64_whole_buffers() {
    let b = Uring::builder()
        .incremental(bufring::Incremental::Off)
        .buf_len(16 * 1024);
    let Some(uring) = common::uring(b) else {
        return;
    };
    echo_many(uring).await;
}
