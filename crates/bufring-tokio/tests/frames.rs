//! Frames as a stream (`RecvStream::frames`): length-prefixed frames from 32 connections
//! written in pieces cut anywhere, on the multi-thread runtime and in the in-runtime mode;
//! CRLF lines echoed back; and the errors a peer can cause (a frame over the maximum, a
//! stream that ends inside a frame, a reset), each an item followed by the end.

mod common;

use std::io::ErrorKind;

use bufring_tokio::{Builder, Delimited, Frame, LengthPrefixed, Uring};
use common::{
    current_thread, fill, in_the_runtime, multi_thread, next, pair, with_driver_thread, LIMIT,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const CONNS: u64 = 32;
const FRAMES: u64 = 400;
const MAX: usize = 4096;

/// Frame `i` of connection `seed`: 0 to 3,000 bytes of its pattern.
fn body(seed: u64, i: u64) -> Vec<u8> {
    let len = ((seed * 613 + i * 1_777) % 3001) as usize;
    fill(seed, i * 4096, len)
}

/// Writes a frame naming the connection (its seed), then every frame, each with its 4-byte
/// big-endian length, in writes of uneven sizes that cut prefixes and bodies anywhere; then
/// closes.
async fn write_frames(mut tcp: TcpStream, seed: u64) {
    let mut all = Vec::new();
    all.extend_from_slice(&8u32.to_be_bytes());
    all.extend_from_slice(&seed.to_le_bytes());
    for i in 0..FRAMES {
        let b = body(seed, i);
        all.extend_from_slice(&(b.len() as u32).to_be_bytes());
        all.extend_from_slice(&b);
    }
    let mut at = 0;
    let mut k = seed;
    while at < all.len() {
        k = k.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let n = (1 + (k >> 33) as usize % 9_000).min(all.len() - at);
        tcp.write_all(&all[at..at + n]).await.unwrap();
        at += n;
        if k % 3 == 0 {
            tokio::task::yield_now().await;
        }
    }
    tcp.shutdown().await.unwrap();
}

/// Checks every frame of one connection, in order, then the end; returns (frames, zero-copy).
async fn read_frames(stream: bufring_tokio::RecvStream) -> (u64, u64) {
    let mut frames = stream.frames(LengthPrefixed::u32_be(MAX));
    let first = next(&mut frames).await.unwrap().unwrap();
    let seed = u64::from_le_bytes(first[..].try_into().expect("an 8-byte seed frame"));
    let (mut n, mut zero_copy) = (0, 0);
    while let Some(f) = next(&mut frames).await {
        let f = f.unwrap_or_else(|e| panic!("connection {seed}, frame {n}: {e}"));
        assert_eq!(&f[..], &body(seed, n)[..], "connection {seed}, frame {n}");
        zero_copy += u64::from(f.is_zero_copy());
        n += 1;
    }
    (n, zero_copy)
}

async fn frames_from_many(uring: Uring) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let writers: Vec<_> = (0..CONNS)
        .map(|seed| {
            tokio::spawn(async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                write_frames(tcp, seed).await;
            })
        })
        .collect();
    let mut readers = Vec::new();
    for _ in 0..CONNS {
        let (tcp, _) = listener.accept().await.unwrap();
        let stream = uring.recv_stream(tcp).unwrap();
        readers.push(tokio::spawn(read_frames(stream)));
    }
    let mut zero_copy = 0;
    for r in readers {
        let (n, z) = r.await.unwrap();
        assert_eq!(n, FRAMES);
        zero_copy += z;
    }
    for w in writers {
        w.await.unwrap();
    }
    // Most frames lie in one chunk (64 KiB buffers, frames up to 3 KB).
    assert!(
        zero_copy > CONNS * FRAMES / 2,
        "only {zero_copy} of {} frames in place",
        CONNS * FRAMES
    );
}

#[test]
fn length_prefixed_frames_from_32_connections() {
    with_driver_thread(multi_thread(), Builder::default(), frames_from_many);
}

#[test]
fn length_prefixed_frames_in_the_runtime() {
    in_the_runtime(Builder::default(), frames_from_many);
}

/// CRLF lines, echoed back through the driver from the frames themselves (in place, or
/// copied when a line straddled two chunks).
#[test]
fn crlf_lines_echoed() {
    current_thread().block_on(async {
        let Some(uring) = common::uring(Builder::default()) else {
            return;
        };
        let (ours, mut peer) = pair().await;
        let stream = uring.recv_stream(ours).unwrap();
        let server = tokio::spawn(async move {
            let mut lines = stream.frames(Delimited::crlf(256));
            let mut n = 0u64;
            while let Some(line) = lines.next_frame().await {
                let mut out = match line.unwrap() {
                    Frame::Chunk(c) => c.to_vec(),
                    Frame::Copied(v) => v,
                };
                out.extend_from_slice(b"\r\n");
                lines.get_ref().send_bytes(out).await.unwrap();
                n += 1;
            }
            lines.get_ref().flush().await.unwrap();
            n
        });
        let text: String = (0..1000)
            .map(|i| format!("line {i} {}\r\n", "x".repeat(i % 50)))
            .collect();
        let (mut rd, mut wr) = peer.split();
        let write = async {
            for piece in text.as_bytes().chunks(777) {
                wr.write_all(piece).await.unwrap();
            }
            wr.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let read = tokio::io::AsyncReadExt::read_to_end(&mut rd, &mut back);
        let ((), got) = tokio::join!(write, read);
        got.unwrap();
        assert_eq!(server.await.unwrap(), 1000);
        assert_eq!(String::from_utf8(back).unwrap(), text);
    });
}

/// A framed stream of `uring` and its peer.
async fn framed(uring: &Uring) -> (bufring_tokio::Frames<LengthPrefixed>, TcpStream) {
    let (ours, peer) = pair().await;
    let frames = uring
        .recv_stream(ours)
        .unwrap()
        .frames(LengthPrefixed::u32_be(MAX));
    (frames, peer)
}

/// The next item of `frames`, which must be an error of `kind`; then the end.
async fn expect_error_then_end(
    frames: &mut bufring_tokio::Frames<LengthPrefixed>,
    kind: ErrorKind,
) {
    let e = timeout(LIMIT, frames.next_frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), kind, "{e}");
    assert!(frames.next_frame().await.is_none());
}

/// What a peer can do to a framed stream, each an error item and then the end: claim a frame
/// longer than the maximum, end the stream inside a frame, reset the connection.
#[test]
fn a_hostile_peer_ends_the_frames_with_an_error() {
    current_thread().block_on(async {
        let Some(uring) = common::uring(Builder::default()) else {
            return;
        };
        // A 1 MiB frame against a 4 KiB maximum.
        let (mut frames, mut peer) = framed(&uring).await;
        peer.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        expect_error_then_end(&mut frames, ErrorKind::InvalidData).await;

        // A frame cut short by the end of the stream, after a whole one.
        let (mut frames, mut peer) = framed(&uring).await;
        peer.write_all(&[0, 0, 0, 2, b'o', b'k', 0, 0, 0, 9, b'c', b'u'])
            .await
            .unwrap();
        peer.shutdown().await.unwrap();
        let ok = timeout(LIMIT, frames.next_frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&ok[..], b"ok");
        expect_error_then_end(&mut frames, ErrorKind::UnexpectedEof).await;

        // A reset in the middle of a frame.
        let (mut frames, mut peer) = framed(&uring).await;
        peer.write_all(&[0, 0, 0, 9, b'c']).await.unwrap();
        // Let the bytes arrive before the reset (a reset may discard data not yet received).
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        peer.set_zero_linger().unwrap();
        drop(peer);
        expect_error_then_end(&mut frames, ErrorKind::ConnectionReset).await;
    });
}
