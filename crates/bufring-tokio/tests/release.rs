//! `RecvStream::release` hands the socket back: every byte that arrived before it is in
//! `unread` or still in the socket (none lost, none repeated), the fd works as a plain socket
//! afterwards (both directions), the driver no longer counts it, and senders fail. On the
//! driver thread and in the in-runtime mode.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

use bufring_tokio::{Builder, Uring};
use common::{fill, in_the_runtime, next, pair, Checker, LIMIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const SEED: u64 = 21;
const BEFORE: usize = 300_000;
const AFTER: usize = 100_000;

async fn release_keeps_every_byte(uring: Uring) {
    let leaks = bufring::leaks();
    let (mine, mut peer) = pair().await;
    let mut s = uring.recv_stream(mine).unwrap();
    let sender = s.sender();
    let run = async {
        // Some of it taken through the stream, the rest left to `unread` or the socket.
        peer.write_all(&fill(SEED, 0, BEFORE)).await.unwrap();
        let mut check = Checker::new(SEED);
        while check.pos < 50_000 {
            let c = next(&mut s).await.unwrap().unwrap();
            check.check(&c);
        }
        s.send_bytes(b"from the stream".to_vec()).await.unwrap();
        s.flush().await.unwrap();
        let released = s.release().await.unwrap();
        let taken = check.pos;
        for c in &released.unread {
            check.check(c);
        }
        eprintln!(
            "released with {} bytes unread, after {taken} taken",
            check.pos - taken
        );
        let e = sender.send_bytes(b"late".to_vec()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotConnected, "{e}");
        // A plain blocking socket from here on (off the runtime's thread).
        peer.write_all(&fill(SEED, BEFORE as u64, AFTER))
            .await
            .unwrap();
        let mut got = vec![0u8; 15];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"from the stream");
        let fd = released.fd;
        let total = (BEFORE + AFTER) as u64;
        let reader = tokio::task::spawn_blocking(move || {
            let mut tcp = std::net::TcpStream::from(fd);
            tcp.set_nonblocking(false).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            while check.pos < total {
                let n = tcp.read(&mut buf).expect("the rest of the bytes, in time");
                assert!(n > 0, "end of stream at {} of {total}", check.pos);
                check.check(&buf[..n]);
            }
            tcp.write_all(b"plain").unwrap();
            check.pos
        });
        assert_eq!(reader.await.unwrap(), total, "every byte once, in order");
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"plain");
        let stats = uring.stats().await.unwrap();
        assert_eq!(stats.streams, 0);
        assert_eq!(stats.driver.sockets, 0, "the driver let the socket go");
    };
    timeout(LIMIT, run).await.expect("in time");
    assert_eq!(bufring::leaks(), leaks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_on_the_driver_thread() {
    let Some(uring) = common::uring(Builder::default()) else {
        return;
    };
    release_keeps_every_byte(uring).await;
}

#[test]
fn release_in_the_runtime() {
    in_the_runtime(Builder::default(), release_keeps_every_byte);
}

/// Releasing a stream whose socket the peer reset: the data before the reset is in `unread`
/// (or the call fails cleanly); nothing hangs.
#[tokio::test(flavor = "current_thread")]
async fn release_after_a_reset() {
    let Some(uring) = common::uring(Builder::default()) else {
        return;
    };
    let (mine, peer) = pair().await;
    let s = uring.recv_stream(mine).unwrap();
    let mut peer = peer;
    peer.write_all(b"abc").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.buffered() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "nothing received");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    peer.set_zero_linger().unwrap();
    drop(peer);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let released = timeout(LIMIT, s.release()).await.expect("in time").unwrap();
    let got: Vec<u8> = released.unread.iter().flat_map(|c| c.to_vec()).collect();
    assert_eq!(got, b"abc");
}
