//! Datagram sockets (`Uring::datagram_socket`) on UDP loopback: an unconnected echo server
//! replying with `send_to` to many clients on both runtime flavours and in the in-runtime
//! mode, a connected socket whose peer's port is closed (the error, then the end), a datagram
//! too long for UDP (it fails alone, `flush` says so), truncation to the buffer, dropping a
//! socket while datagrams arrive, and a flooded socket nobody reads beside one that echoes.

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use bufring_tokio::{Builder, DatagramSocket, Uring};
use common::{current_thread, fill, in_the_runtime, multi_thread, next, with_driver_thread, LIMIT};
use tokio::net::UdpSocket;
use tokio::time::timeout;

const CLIENTS: u64 = 16;
const PER_CLIENT: u64 = 200;
/// Datagrams a client has in flight at once: few enough that no socket buffer on the way
/// overflows (loopback UDP drops only then), so every datagram must come back.
const WINDOW: u64 = 4;

/// Datagram `i` of client `seed`: 1 to 1,400 bytes of its pattern.
fn datagram(seed: u64, i: u64) -> Vec<u8> {
    let len = 1 + ((seed * 131 + i * 977) % 1400) as usize;
    fill(seed, i * 1400, len)
}

/// Replies to each datagram with its own payload (no copy), to where it came from, until the
/// socket is dropped by the test's end; counts what it echoed.
async fn echo_server(mut sock: DatagramSocket, total: u64) -> u64 {
    let mut echoed = 0;
    while echoed < total {
        let d = match next(&mut sock).await {
            Some(Ok(d)) => d,
            other => panic!("server: {other:?}"),
        };
        assert!(!d.is_truncated());
        let to = d.source().expect("a source address");
        sock.send_to(d.into_payload(), to).await.unwrap();
        echoed += 1;
    }
    sock.flush().await.unwrap();
    echoed
}

/// Sends its datagrams `WINDOW` at a time and checks each echo, in order.
async fn echo_client(server: SocketAddr, seed: u64) -> u64 {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let mut i = 0;
    while i < PER_CLIENT {
        let end = (i + WINDOW).min(PER_CLIENT);
        for k in i..end {
            sock.send(&datagram(seed, k)).await.unwrap();
        }
        for k in i..end {
            let n = timeout(Duration::from_secs(10), sock.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("client {seed}: no echo of datagram {k}"))
                .unwrap();
            assert_eq!(
                &buf[..n],
                &datagram(seed, k)[..],
                "client {seed}, datagram {k}"
            );
        }
        i = end;
    }
    i
}

async fn echo_many(uring: Uring) {
    let leaks = bufring::leaks();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let sock = uring.datagram_socket(udp).unwrap();
    let server = tokio::spawn(echo_server(sock, CLIENTS * PER_CLIENT));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|seed| tokio::spawn(echo_client(addr, seed)))
        .collect();
    for c in clients {
        assert_eq!(c.await.unwrap(), PER_CLIENT);
    }
    assert_eq!(server.await.unwrap(), CLIENTS * PER_CLIENT);
    let stats = uring.stats().await.unwrap();
    let pool = stats.datagram_pool.expect("a datagram pool");
    assert_eq!(pool.rejected, 0);
    assert!(pool.completions >= CLIENTS * PER_CLIENT);
    assert_eq!(stats.streams, 0, "the server's socket was dropped");
    drop(uring);
    assert_eq!(bufring::leaks(), leaks, "nothing leaked");
}

#[test]
fn udp_echo_on_a_multi_thread_runtime() {
    with_driver_thread(multi_thread(), Builder::default(), echo_many);
}

#[test]
fn udp_echo_on_a_current_thread_runtime() {
    // A small pool: datagrams wait for buffers now and then.
    let b = Builder::default().datagram_buffers(16);
    with_driver_thread(current_thread(), b, echo_many);
}

#[test]
fn udp_echo_in_the_runtime() {
    in_the_runtime(Builder::default(), echo_many);
}

/// A connected socket whose peer's port is closed: the kernel's ICMP error ends the receive,
/// as one `ConnectionRefused` item, then the end.
#[test]
fn a_refused_peer_is_an_error_item_then_the_end() {
    current_thread().block_on(async {
        let Some(uring) = common::uring(Builder::default()) else {
            return;
        };
        let closed = UdpSocket::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        udp.connect(closed).await.unwrap();
        let mut sock = uring.datagram_socket(udp).unwrap();
        sock.send_bytes(b"anyone?".to_vec()).await.unwrap();
        let item = timeout(Duration::from_secs(10), sock.recv()).await.unwrap();
        match item {
            Some(Err(e)) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
            other => panic!("expected the refusal, got {other:?}"),
        }
        assert!(sock.recv().await.is_none());
    });
}

/// A datagram too long for UDP fails alone: the one queued after it still arrives, and
/// `flush` returns the failure (once). A datagram longer than a buffer arrives cut short and
/// says how long it was.
#[test]
fn a_failed_datagram_fails_alone_and_a_long_one_is_cut_to_the_buffer() {
    current_thread().block_on(async {
        let Some(uring) = common::uring(Builder::default().datagram_buf_len(256)) else {
            return;
        };
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let mut sock = uring.datagram_socket(udp).unwrap();
        let to = peer.local_addr().unwrap();
        sock.send_bytes_to(vec![7u8; 70_000], to).await.unwrap();
        sock.send_bytes_to(b"still here".to_vec(), to)
            .await
            .unwrap();
        let e = sock.flush().await.expect_err("the long datagram failed");
        // EMSGSIZE.
        assert_eq!(e.raw_os_error(), Some(90), "{e}");
        sock.flush().await.expect("reported once");
        let mut buf = [0u8; 64];
        let n = timeout(Duration::from_secs(10), peer.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"still here");
        // 1,000 bytes into a 256-byte buffer (44 of them the header).
        peer.send_to(&fill(9, 0, 1000), addr).await.unwrap();
        let d = timeout(Duration::from_secs(10), sock.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(d.is_truncated());
        assert_eq!(d.payload_len(), 1000);
        assert_eq!(&d.payload()[..], &fill(9, 0, d.payload().len())[..]);
        assert_eq!(d.payload().len(), 256 - 44);
    });
}

/// Dropping a socket while datagrams keep arriving cancels its receive and closes it: the
/// `Uring` counts no socket afterwards, and a new socket on the same pool works.
#[test]
fn dropping_a_socket_mid_traffic_closes_it() {
    current_thread().block_on(async {
        let Some(uring) = common::uring(Builder::default()) else {
            return;
        };
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let mut sock = uring.datagram_socket(udp).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let blast = tokio::spawn(async move {
            for i in 0..2000u64 {
                let _ = sender.send_to(&datagram(1, i), addr).await;
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let first = timeout(Duration::from_secs(10), sock.recv()).await.unwrap();
        assert!(matches!(first, Some(Ok(_))));
        drop(sock);
        blast.await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while uring.stats().await.unwrap().driver.sockets > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the socket stayed open"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The pool serves the next socket.
        timeout(LIMIT, async {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            let sock = uring.datagram_socket(udp).unwrap();
            let server = tokio::spawn(echo_server(sock, PER_CLIENT));
            assert_eq!(echo_client(addr, 3).await, PER_CLIENT);
            assert_eq!(server.await.unwrap(), PER_CLIENT);
        })
        .await
        .unwrap();
    });
}

/// Datagrams sent at the socket nobody reads.
const FLOOD: u64 = 8000;

/// A datagram socket nobody reads, flooded, beside one that echoes: the flooded socket's
/// queues stay within the stream limit and the driver's quota, its stream queue leaves the
/// pool (idle spill), and the echo on the other socket completes. (The kernel drops what the flooded
/// socket's buffer cannot hold, as UDP does.)
#[test]
fn a_flooded_socket_nobody_reads_holds_its_limit_and_others_go_on() {
    current_thread().block_on(async {
        let limit = 16 * 1024;
        let builder = Builder::default()
            .stream_limit(limit)
            .datagram_buffers(64)
            .driver(bufring::driver::Driver::builder().recv_quota(limit, limit));
        let Some(uring) = common::uring(builder) else {
            return;
        };
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let flooded_addr = udp.local_addr().unwrap();
        let flooded = uring.datagram_socket(udp).unwrap();
        let blaster = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut blasted = 0;
        for i in 0..FLOOD {
            if blaster.send_to(&datagram(5, i), flooded_addr).await.is_ok() {
                blasted += datagram(5, i).len();
            }
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        // The other socket echoes all its datagrams meanwhile.
        timeout(LIMIT, async {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            let sock = uring.datagram_socket(udp).unwrap();
            let server = tokio::spawn(echo_server(sock, PER_CLIENT));
            assert_eq!(echo_client(addr, 4).await, PER_CLIENT);
            assert_eq!(server.await.unwrap(), PER_CLIENT);
        })
        .await
        .unwrap();
        // A message is at most a buffer (2 KiB): the queue stops within one of the limit.
        assert!(
            flooded.buffered() <= limit + 2048,
            "{} bytes queued",
            flooded.buffered()
        );
        // The driver's queue for it stops at its quota, plus what the multishot brought before
        // its cancel landed: recvmsg has no byte limit, so one wake-up takes the socket's
        // whole receive queue (at most its buffer, rmem_default), and datagrams arriving
        // meanwhile can add up to about as much again. Seen: 300 KB with a 208 KiB buffer.
        let rmem: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_default")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(212_992);
        let bound = limit + 2 * rmem + 64 * 1024;
        let queued = flooded.driver_queued().await.unwrap();
        assert!(
            queued <= bound,
            "{queued} bytes in the driver's queue (bound {bound})"
        );
        assert!(
            blasted > 4 * bound,
            "the flood ({blasted} bytes) was too small to tell"
        );
        // The stream queue of a task that takes nothing moves to the heap (idle spill).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while uring.stats().await.unwrap().idle_spilled_bytes == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no idle spill");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Its queue is still all there, whole.
        let mut flooded = flooded;
        let d = flooded.recv().await.unwrap().unwrap();
        let i = (0..FLOOD).find(|&i| datagram(5, i) == d.payload()[..]);
        assert!(i.is_some(), "a spilled datagram changed");
    });
}
