//! Incremental consumption by the kernel and emulated on a classic ring, held to the same
//! integrity tests: checksummed tens of MB over TCP loopback in random write sizes, the ring
//! tail wrapping many times, the ring running dry and the receive re-armed with nothing lost.

mod common;
mod recvkit;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bufring::Cqe;
use bufring::{Completion, Error, Incremental, Pool};
#[allow(unused_imports)]
use common::{one, Reap};

fn pool(ring: &io_uring::IoUring, bgid: u16, mode: Incremental, min_left: u32) -> Option<Pool> {
    match Pool::builder(bgid)
        .count(8)
        .buf_len(16 * 1024)
        .incremental(mode)
        .min_left(min_left)
        .build(ring)
    {
        Ok(p) => Some(p),
        Err(Error::Unsupported { feature }) => {
            eprintln!("SKIPPED: {feature} unsupported here");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn integrity(mode: Incremental, min_left: u32) {
    let mut ring = require_uring!();
    let Some(mut pool) = pool(&ring, 1, mode, min_left) else {
        return;
    };
    // Large random writes make the ring run dry while chunks are held; small paced ones leave
    // buffers partly used by each completion. 20 MiB in all.
    let big = recvkit::one_stream(&mut ring, &mut pool, 16 << 20, 48 * 1024, false, 5);
    let small = recvkit::one_paced_stream(&mut ring, &mut pool, 4 << 20, 3000, 5);
    let s = pool.stats();
    eprintln!("{mode:?} min_left {min_left}: {big:?} {small:?} {s:?}");
    assert_eq!(s.bytes_delivered, 20 << 20);
    assert_eq!(s.rejected, 0);
    assert!(big.enobufs > 0, "the ring never ran dry");
    assert!(
        small.partial_chunks > 0,
        "no buffer was shared by several completions"
    );
    // The tail wrapped many times (8 entries).
    assert!(s.reposted + s.emulated_reposts > 100 * 8);
    assert_eq!(s.with_app, 0);
    if mode == Incremental::Emulated {
        assert!(s.emulated_reposts > 0);
    }
    // The kernel's head through PBUF_STATUS (6.8); emulation runs on older kernels too.
    match pool.ring().unwrap().head() {
        Err(Error::Unsupported { .. }) => eprintln!("no PBUF_STATUS here: head not compared"),
        head => assert_eq!(pool.shadow_head(), head.unwrap()),
    }
}

#[test]
fn kernel_incremental_integrity() {
    integrity(Incremental::Kernel, 0);
}

#[test]
fn emulated_incremental_integrity() {
    integrity(Incremental::Emulated, 0);
}

#[test]
fn emulated_incremental_integrity_with_min_left() {
    integrity(Incremental::Emulated, 3000);
}

#[test]
fn auto_reports_what_it_got() {
    let ring = require_uring!();
    let probe = bufring::Probe::run_on(&ring);
    let p = Pool::builder(2)
        .count(2)
        .buf_len(4096)
        .incremental(Incremental::Auto)
        .build(&ring)
        .unwrap();
    let want = if probe.incremental {
        Incremental::Kernel
    } else {
        Incremental::Emulated
    };
    assert_eq!(p.incremental(), want);
    assert!(p.is_incremental());
    // min_left falls back to emulation where the kernel lacks it.
    let p = Pool::builder(3)
        .count(2)
        .buf_len(4096)
        .incremental(Incremental::Auto)
        .min_left(100)
        .build(&ring)
        .unwrap();
    let want = if probe.min_left {
        Incremental::Kernel
    } else {
        Incremental::Emulated
    };
    assert_eq!(p.incremental(), want);
    // Kernel mode with min_left where unsupported is a typed error.
    let r = Pool::builder(4)
        .count(2)
        .buf_len(4096)
        .incremental(Incremental::Kernel)
        .min_left(100)
        .build(&ring);
    if !probe.min_left {
        // Before 6.12 incremental rings are what is missing first.
        let missing = if probe.incremental {
            bufring::Feature::MinLeft
        } else {
            bufring::Feature::Incremental
        };
        assert!(matches!(r, Err(Error::Unsupported { feature }) if feature == missing));
    }
}

/// The emulated version of the worked example: each completion's rest goes back at the tail,
/// so the next completion may land in the other buffer first, but offsets are always where
/// the previous data of that buffer ended.
#[test]
fn emulated_sequence() {
    let mut ring = require_uring!(64);
    let mut pool = Pool::builder(5)
        .count(2)
        .buf_len(32 * 1024)
        .incremental(Incremental::Emulated)
        .build(&ring)
        .unwrap();
    let (rx, mut tx) = common::tcp_pair();
    common::push(&mut ring, &pool.recv_multishot(rx.as_raw_fd()));
    let mut seen = Vec::new();
    for size in [4096usize, 8192, 20480, 4096] {
        tx.write_all(&vec![size as u8; size]).unwrap();
        let mut got = 0;
        while got < size {
            for (_, res, flags) in common::reap(&mut ring, Duration::from_secs(5)) {
                match pool.reap(Cqe::new(res, flags)).unwrap() {
                    Completion::Data { chunks, more } => {
                        let chunk = one(chunks);
                        assert!(more);
                        assert!(chunk.iter().all(|&b| b == size as u8));
                        got += chunk.len();
                        seen.push((chunk.len(), chunk.bid(), chunk.offset(), !chunk.is_last()));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            pool.publish();
        }
    }
    // Ring order: bid 0, bid 1, rest of 0, rest of 1, ...
    assert_eq!(
        seen,
        vec![
            (4096, 0, 0, true),
            (8192, 1, 0, true),
            (20480, 0, 4096, true),
            (4096, 1, 8192, true)
        ]
    );
    assert_eq!(pool.stats().emulated_reposts, 4);
    drop(tx);
    for (_, res, flags) in common::reap(&mut ring, Duration::from_secs(5)) {
        assert!(matches!(
            pool.reap(Cqe::new(res, flags)).unwrap(),
            Completion::EndOfStream
        ));
    }
}

/// A rest smaller than min_left is not posted: the buffer retires with its last chunk.
#[test]
fn emulated_min_left_retires_small_rests() {
    let ring = require_uring!();
    let mut pool = Pool::builder(6)
        .count(2)
        .buf_len(4096)
        .incremental(Incremental::Emulated)
        .min_left(1000)
        .build(&ring)
        .unwrap();
    let f = |bid: u32| 1 | (bid << 16);
    let a = pool.reap_chunk(Cqe::new(3000, f(0)));
    assert!(!a.is_last());
    assert_eq!(pool.cursor(0), Some(3000));
    // The rest is not published yet: the kernel cannot have used it.
    assert!(pool.reap(Cqe::new(96, f(0))).is_err());
    assert_eq!(pool.publish(), 1);
    let b = pool.reap_chunk(Cqe::new(96, f(0)));
    // 1000 bytes left: still posted.
    assert!(!b.is_last());
    assert_eq!(pool.publish(), 1);
    let c = pool.reap_chunk(Cqe::new(1, f(0)));
    // 999 left: retired.
    assert!(c.is_last());
    assert_eq!(pool.stats().with_app, 1);
    drop((a, b, c));
    // The returned buffer.
    assert_eq!(pool.publish(), 1);
    assert_eq!(pool.cursor(0), Some(0));
}

/// The chunks of a buffer the kernel keeps are counted by the pool without atomics and folded
/// into the buffer's shared count every 4096 pieces and at retirement: thousands of pieces,
/// held and dropped in any order, give the buffer back once, after the last one.
#[test]
fn thousands_of_pieces_of_one_buffer_return_it_once() {
    let (mut pool, _model) = Pool::builder(0)
        .count(2)
        .buf_len(16 * 1024)
        .incremental(Incremental::Kernel)
        .build_detached()
        .unwrap();
    let f = |bid: u32, more: bool| 1 | (bid << 16) | if more { 1 << 4 } else { 0 };
    let mut held = Vec::new();
    for _ in 0..10_000 {
        // SAFETY: a detached pool: no kernel writes into it.
        let c = unsafe { pool.complete(Cqe::new(1, f(0, true))) }.unwrap();
        held.push(one(c.into_chunks().unwrap()));
    }
    assert_eq!(pool.refs(0), Some(10_001), "10,000 chunks and the kernel");
    // Drop every other chunk, then retire the buffer with one more piece.
    let mut keep = Vec::new();
    for (k, c) in held.into_iter().enumerate() {
        if k % 2 == 0 {
            keep.push(c);
        }
    }
    assert_eq!(pool.refs(0), Some(5_001));
    // SAFETY: as above.
    let last = unsafe { pool.complete(Cqe::new(6384, f(0, false))) }.unwrap();
    let last = one(last.into_chunks().unwrap());
    assert!(last.is_last());
    assert_eq!(
        pool.refs(0),
        Some(5_001),
        "the last chunk took the kernel's reference"
    );
    assert_eq!(pool.publish(), 0, "chunks are alive: nothing to post");
    drop(keep);
    assert_eq!(pool.publish(), 0);
    drop(last);
    assert_eq!(pool.publish(), 1, "the last chunk gave the buffer back");
    assert_eq!(pool.refs(0), Some(1));
}
