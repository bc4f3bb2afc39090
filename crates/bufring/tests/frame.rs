//! Framing over real TCP connections: frames written in random pieces come out whole and in
//! order, on incremental and classic pools, zero copy unless they straddle two buffers.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bufring::Cqe;
use bufring::{
    Delimited, Error, FrameError, Framing, Incremental, LengthPrefixed, Pool, RecvStream,
};
use common::Pattern;
#[allow(unused_imports)]
use common::{one, Reap};

/// Frame `seq`'s body: its number in decimal, a colon, then letters seeded by it (never `\r`
/// or `\n`, so delimited framing can use it too).
fn body(seq: u32, max: usize) -> Vec<u8> {
    let mut p = Pattern::new(u64::from(seq) + 11);
    let len = 12 + p.next_u64() as usize % (max - 11);
    let mut v = format!("{seq:010}:").into_bytes();
    while v.len() < len {
        v.push(b'a' + (p.next_u64() % 26) as u8);
    }
    v
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    U16,
    U32,
    Crlf,
}

fn wire(kind: Kind, frames: u32, max: usize) -> Vec<u8> {
    let mut w = Vec::new();
    for seq in 0..frames {
        let b = body(seq, max);
        match kind {
            Kind::U16 => w.extend_from_slice(&(b.len() as u16).to_be_bytes()),
            Kind::U32 => w.extend_from_slice(&(b.len() as u32).to_be_bytes()),
            Kind::Crlf => {}
        }
        w.extend_from_slice(&b);
        if let Kind::Crlf = kind {
            w.extend_from_slice(b"\r\n");
        }
    }
    w
}

/// Writes `wire` in pieces of random size (1..=max_write), then closes.
fn send_in_pieces(mut s: TcpStream, wire: Vec<u8>, max_write: usize, seed: u64) {
    let mut sizes = Pattern::new(seed);
    let mut at = 0;
    while at < wire.len() {
        let n = (1 + sizes.next_u64() as usize % max_write).min(wire.len() - at);
        s.write_all(&wire[at..at + n]).unwrap();
        at += n;
    }
}

struct Outcome {
    frames: u32,
    zero_copy: u32,
    merges: u64,
    buffers_retired: u64,
    completions: u64,
}

fn run(mode: Incremental, kind: Kind, seed: u64) -> Option<Outcome> {
    let mut ring = common::uring(64)?;
    let (count, buf_len) = match mode {
        Incremental::Off => (32, 16 * 1024),
        _ => (8, 64 * 1024),
    };
    let mut pool = match Pool::builder(30)
        .count(count)
        .buf_len(buf_len)
        .incremental(mode)
        .build(&ring)
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            return None;
        }
    };
    let (max, frames) = (3000, 1500);
    let mut framing: Box<dyn Framing> = match kind {
        Kind::U16 => Box::new(LengthPrefixed::u16_be(max)),
        Kind::U32 => Box::new(LengthPrefixed::u32_be(max)),
        Kind::Crlf => Box::new(Delimited::crlf(max)),
    };
    let (rx, tx) = common::tcp_pair();
    let w = wire(kind, frames, max);
    let total = w.len();
    let sender = std::thread::spawn(move || send_in_pieces(tx, w, 9000, seed));
    let mut stream = RecvStream::new();
    let mut out = Outcome {
        frames: 0,
        zero_copy: 0,
        merges: 0,
        buffers_retired: 0,
        completions: 0,
    };
    common::receive_stream(
        &mut ring,
        &mut pool,
        &rx,
        Duration::from_secs(30),
        |_, chunk| {
            stream.push(chunk);
            while let Some(f) = stream.next_frame(&mut *framing).unwrap() {
                assert_eq!(
                    &f[..],
                    &body(out.frames, max)[..],
                    "frame {} differs ({kind:?}, {mode:?})",
                    out.frames
                );
                out.frames += 1;
                out.zero_copy += u32::from(f.is_zero_copy());
            }
        },
    );
    sender.join().unwrap();
    stream.finish();
    assert!(stream.next_frame(&mut *framing).unwrap().is_none());
    assert!(stream.is_empty());
    assert_eq!(out.frames, frames);
    let st = pool.stats();
    assert_eq!(st.bytes_delivered, total as u64);
    out.merges = stream.merges();
    out.buffers_retired = st.buffers_retired;
    out.completions = st.completions;
    eprintln!(
        "{mode:?} {kind:?}: {} frames, {} zero copy, {} merges, {} completions, {} buffers retired",
        out.frames, out.zero_copy, out.merges, out.completions, out.buffers_retired
    );
    Some(out)
}

fn incremental(kind: Kind) {
    for seed in [1, 2] {
        let Some(o) = run(Incremental::Kernel, kind, seed) else {
            return;
        };
        // Receives of one buffer merge (how many depends on timing), so only frames across a
        // buffer's end are copied.
        assert!(
            u64::from(o.frames - o.zero_copy) <= o.buffers_retired,
            "{} frames copied but only {} buffer boundaries",
            o.frames - o.zero_copy,
            o.buffers_retired
        );
        assert!(o.buffers_retired >= 8, "the ring did not wrap");
    }
}

fn classic(kind: Kind) {
    for seed in [3, 4] {
        let Some(o) = run(Incremental::Off, kind, seed) else {
            return;
        };
        assert_eq!(o.merges, 0);
        assert!(u64::from(o.frames - o.zero_copy) <= o.completions);
        assert!(o.buffers_retired >= 32, "the ring did not wrap");
    }
}

#[test]
fn u16_frames_incremental() {
    incremental(Kind::U16);
}

#[test]
fn u32_frames_incremental() {
    incremental(Kind::U32);
}

#[test]
fn crlf_frames_incremental() {
    incremental(Kind::Crlf);
}

#[test]
fn u16_frames_classic() {
    classic(Kind::U16);
}

#[test]
fn u32_frames_classic() {
    classic(Kind::U32);
}

#[test]
fn crlf_frames_classic() {
    classic(Kind::Crlf);
}

#[test]
fn an_oversized_frame_from_the_peer_is_a_typed_error() {
    let mut ring = require_uring!();
    let mut pool = Pool::builder(31)
        .count(4)
        .buf_len(4096)
        .build(&ring)
        .unwrap();
    let (rx, mut tx) = common::tcp_pair();
    tx.write_all(&[0, 0, 0x10, 0x00, b'x']).unwrap();
    drop(tx);
    let mut stream = RecvStream::new();
    let mut framing = LengthPrefixed::u32_be(1024);
    let mut errors = Vec::new();
    common::receive_stream(&mut ring, &mut pool, &rx, Duration::from_secs(5), |_, c| {
        stream.push(c);
        if let Err(e) = stream.next_frame(&mut framing) {
            errors.push(e);
        }
    });
    assert!(
        matches!(
            errors.first(),
            Some(Error::Frame(FrameError::TooLong {
                len: 4096,
                max: 1024
            }))
        ),
        "{errors:?}"
    );
}

/// Two connections share one incremental pool: their receives interleave in the same buffers,
/// so a connection's chunks are adjacent only between the other's. Each stream must merge
/// only its own adjacent chunks and still frame every message right.
#[test]
fn two_connections_sharing_an_incremental_pool() {
    let mut ring = require_uring!();
    let mut pool = match Pool::builder(32)
        .count(8)
        .buf_len(64 * 1024)
        .incremental(Incremental::Kernel)
        .build(&ring)
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            return;
        }
    };
    let (max, frames) = (3000, 1000);
    let mut conns = Vec::new();
    let mut senders = Vec::new();
    for (i, kind) in [Kind::U16, Kind::Crlf].into_iter().enumerate() {
        let (rx, tx) = common::tcp_pair();
        let w = wire(kind, frames, max);
        senders.push(std::thread::spawn(move || {
            send_in_pieces(tx, w, 700, 10 + i as u64)
        }));
        let framing: Box<dyn Framing> = match kind {
            Kind::Crlf => Box::new(Delimited::crlf(max)),
            _ => Box::new(LengthPrefixed::u16_be(max)),
        };
        common::push(
            &mut ring,
            &pool.recv_multishot(rx.as_raw_fd()).user_data(i as u64),
        );
        conns.push((rx, framing, RecvStream::new(), 0u32, 0u32));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while conns.iter().any(|c| !c.2.is_finished()) {
        assert!(std::time::Instant::now() < deadline, "streams not finished");
        for (ud, res, flags) in common::reap(&mut ring, Duration::from_millis(200)) {
            let (rx, framing, stream, seq, zero_copy) = &mut conns[ud as usize];
            let c = pool
                .reap(Cqe::new(res, flags))
                .expect("completion rejected");
            let goes_on = c.more() || matches!(c, bufring::Completion::EndOfStream);
            if let Some(other) = stream.push_completion(c) {
                assert!(matches!(other, bufring::Completion::NoBuffers), "{other:?}");
            }
            while let Some(f) = stream.next_frame(&mut **framing).unwrap() {
                assert_eq!(&f[..], &body(*seq, max)[..], "connection {ud} frame {seq}");
                *seq += 1;
                *zero_copy += u32::from(f.is_zero_copy());
            }
            if !goes_on {
                pool.publish();
                common::push(
                    &mut ring,
                    &pool.recv_multishot(rx.as_raw_fd()).user_data(ud),
                );
            }
        }
        pool.publish();
    }
    for s in senders {
        s.join().unwrap();
    }
    for (i, (_, framing, stream, seq, zero_copy)) in conns.iter_mut().enumerate() {
        assert_eq!(*seq, frames, "connection {i}");
        assert!(stream.next_frame(&mut **framing).unwrap().is_none());
        eprintln!(
            "connection {i}: {seq} frames, {zero_copy} zero copy, {} merges",
            stream.merges()
        );
    }
}
