//! Bundle receives on the live kernel: data in order across buffers, alone and with one ring
//! shared by several connections' multishot bundle receives; classic, kernel-incremental and
//! emulated pools; and forged bundle CQEs rejected without any change.

mod common;
mod recvkit;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bufring::Cqe;
use bufring::{BadCompletion, Completion, Error, Feature, Incremental, Pool};
#[allow(unused_imports)]
use common::{one, Reap};
use recvkit::Conn;

const F_BUFFER: u32 = 1;
const F_BUF_MORE: u32 = 1 << 4;

/// A pool for bundles, or `None` (with a message) when the kernel lacks what `mode` needs.
fn bundle_pool(
    ring: &io_uring::IoUring,
    bgid: u16,
    mode: Incremental,
    count: usize,
) -> Option<Pool> {
    match Pool::builder(bgid)
        .count(count)
        .buf_len(4096)
        .incremental(mode)
        .bundles(true)
        .build(ring)
    {
        Ok(p) => Some(p),
        Err(Error::Unsupported { feature }) => {
            eprintln!("SKIPPED: {feature} unsupported here");
            assert!(matches!(
                feature,
                Feature::Bundles | Feature::IncrementalBundles | Feature::Incremental
            ));
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn stream(mode: Incremental) {
    let mut ring = require_uring!();
    let Some(mut pool) = bundle_pool(&ring, 2, mode, 32) else {
        return;
    };
    let seen = recvkit::one_stream(&mut ring, &mut pool, 8 << 20, 256 * 1024, true, 6);
    eprintln!("{mode:?}: {seen:?} {:?}", pool.stats());
    assert!(
        seen.multi_buffer_bundles > 0,
        "no completion covered several buffers"
    );
    assert!(pool.stats().bundles > 0);
    assert_eq!(pool.stats().rejected, 0);
    // Every buffer is back and the shadow head matches the kernel's.
    assert_eq!(pool.stats().with_app, 0);
    assert_eq!(pool.shadow_head(), pool.ring().unwrap().head().unwrap());
}

#[test]
fn bundle_stream_classic() {
    stream(Incremental::Off);
}

#[test]
fn bundle_stream_kernel_incremental() {
    stream(Incremental::Kernel);
}

#[test]
fn bundle_stream_emulated() {
    stream(Incremental::Emulated);
}

fn shared(mode: Incremental) {
    let mut ring = require_uring!();
    let Some(mut pool) = bundle_pool(&ring, 3, mode, 64) else {
        return;
    };
    let mut conns = Vec::new();
    let mut senders = Vec::new();
    for i in 0..3u64 {
        let (rx, tx) = common::tcp_pair();
        let seed = 0x1000 + i;
        senders.push(std::thread::spawn(move || {
            common::send_pattern(tx, 3 << 20, 100_000, seed)
        }));
        conns.push(Conn::new(rx, seed));
    }
    let seen = recvkit::receive_all(
        &mut ring,
        &mut pool,
        &mut conns,
        true,
        4,
        Duration::from_secs(60),
    );
    for s in senders {
        s.join().unwrap().unwrap();
    }
    for c in &conns {
        assert_eq!(c.checker.received, 3 << 20);
    }
    eprintln!("{mode:?}: {seen:?} {:?}", pool.stats());
    assert!(seen.multi_buffer_bundles > 0);
    assert_eq!(pool.stats().with_app, 0);
}

#[test]
fn shared_ring_bundles_classic() {
    shared(Incremental::Off);
}

#[test]
fn shared_ring_bundles_kernel_incremental() {
    shared(Incremental::Kernel);
}

#[test]
fn shared_ring_bundles_emulated() {
    shared(Incremental::Emulated);
}

fn cqe_flags(bid: u16, extra: u32) -> u32 {
    F_BUFFER | (u32::from(bid) << 16) | extra
}

fn bad(r: bufring::Result<Completion>) -> BadCompletion {
    match r {
        Err(Error::BadCompletion(b)) => b,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Cursor, refs and stats of every buffer: what a rejection must not change.
fn snapshot(pool: &Pool) -> (Vec<(u32, u32)>, u16, u64, u64) {
    let bufs = (0..pool.count() as u16)
        .map(|b| (pool.cursor(b).unwrap(), pool.refs(b).unwrap()))
        .collect();
    let s = pool.stats();
    (bufs, pool.shadow_head(), s.completions, s.bytes_delivered)
}

#[test]
fn forged_bundles_are_rejected_without_change() {
    let ring = require_uring!();
    // Bids 0..4 at ring positions 0..4, 4096 bytes each.
    let mut pool = Pool::builder(4)
        .count(4)
        .buf_len(4096)
        .bundles(true)
        .build(&ring)
        .unwrap();
    let before = snapshot(&pool);
    // Bid 2 with 3 buffers' worth: positions 2, 3 and 4, but only 4 entries are posted.
    let b = bad(pool.reap(Cqe::new(3 * 4096, cqe_flags(2, 0))));
    assert!(
        matches!(
            b,
            BadCompletion::BundleTooLarge {
                bid: 2,
                space: 8192,
                ..
            }
        ),
        "{b:?}"
    );
    // F_BUF_MORE on a classic pool.
    let b = bad(pool.reap(Cqe::new(100, cqe_flags(0, F_BUF_MORE))));
    assert!(matches!(b, BadCompletion::BufMoreOnClassicPool { bid: 0 }));
    // Out of range.
    let b = bad(pool.reap(Cqe::new(100, cqe_flags(9, 0))));
    assert!(matches!(b, BadCompletion::BidOutOfRange { bid: 9, .. }));
    assert_eq!(snapshot(&pool), before);
    assert_eq!(pool.stats().rejected, 3);

    // A real-looking one: bid 0 full, 904 bytes of bid 1.
    match pool.reap(Cqe::new(5000, cqe_flags(0, 0))).unwrap() {
        Completion::Data { chunks, more } => {
            assert!(!more);
            assert_eq!(chunks.buffers(), 2);
            let v: Vec<_> = chunks
                .map(|c| (c.bid(), c.offset(), c.len(), c.is_last()))
                .collect();
            assert_eq!(v, vec![(0, 0, 4096, true), (1, 0, 904, true)]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.shadow_head(), 2);
    // Bid 0 is retired: a bundle naming it again is refused.
    let b = bad(pool.reap(Cqe::new(10, cqe_flags(0, 0))));
    assert!(matches!(b, BadCompletion::BidNotHeldByKernel { bid: 0 }));
    // Bid 0 and 1 come back at positions 4 and 5 (order of return: 1 then 0, or 0 then 1).
    pool.publish();
    let s4 = pool.shadow_slot(4);
    let s5 = pool.shadow_slot(5);
    assert_eq!(
        {
            let mut v = [s4, s5];
            v.sort();
            v
        },
        [0, 1]
    );
    // Bid 3 (position 3) continued by position 4: fine. Continued past 5: too large.
    let b = bad(pool.reap(Cqe::new(3 * 4096 + 1, cqe_flags(3, 0))));
    assert!(matches!(b, BadCompletion::BundleTooLarge { .. }), "{b:?}");
    // Retire bid 3 with a plain completion, then a bundle from bid 2 must stop at position 3.
    let c = pool.reap(Cqe::new(10, cqe_flags(3, 0))).unwrap();
    drop(c);
    let b = bad(pool.reap(Cqe::new(4097, cqe_flags(2, 0))));
    assert!(
        matches!(
            b,
            BadCompletion::BundleOutOfOrder {
                bid: 2,
                index: 1,
                found: 3
            }
        ),
        "{b:?}"
    );
}

/// No fixed bundle size: one completion may cover every posted buffer (here 1024, four times
/// what the kernel maps per pass), walked from the pool's copy of the ring, but not one byte
/// more than they hold. (No receive is armed: no kernel writes into this pool.)
#[test]
fn bundle_may_cover_every_posted_buffer_but_no_more() {
    let ring = require_uring!();
    let mut pool = Pool::builder(5)
        .count(1024)
        .buf_len(16)
        .bundles(true)
        .build(&ring)
        .unwrap();
    let before = snapshot(&pool);
    let b = bad(pool.reap(Cqe::new(1024 * 16 + 1, cqe_flags(0, 0))));
    assert!(
        matches!(b, BadCompletion::BundleTooLarge { space, .. } if space == 1024 * 16),
        "{b:?}"
    );
    assert_eq!(snapshot(&pool), before);
    match pool.reap(Cqe::new(1024 * 16, cqe_flags(0, 0))).unwrap() {
        Completion::Data { chunks, .. } => {
            assert_eq!(chunks.buffers(), 1024);
            let bids: Vec<u16> = chunks.map(|c| c.bid()).collect();
            assert_eq!(bids, (0..1024).collect::<Vec<u16>>());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        pool.publish(),
        1024,
        "every chunk dropped, every buffer posted again"
    );
}

/// A pool that made no bundle receive reads every completion as one buffer's: a result longer
/// than the buffer has left is refused, not spread over the next buffers.
#[test]
fn spanning_completion_without_bundles_is_rejected() {
    let ring = require_uring!();
    let mut pool = Pool::builder(6).count(4).buf_len(16).build(&ring).unwrap();
    let before = snapshot(&pool);
    let b = bad(pool.reap(Cqe::new(17, cqe_flags(0, 0))));
    assert!(matches!(b, BadCompletion::TooLong { bid: 0, .. }), "{b:?}");
    assert_eq!(snapshot(&pool), before);
}

/// A single bundle recv with a lot queued in the socket: the kernel fills 256 buffers, then
/// appends a second pass to the same completion (6.18), so one CQE can cover more than 256
/// buffers. The pool must take it, every byte in order.
#[test]
fn kernel_bundle_beyond_256_buffers_is_accepted() {
    let mut ring = require_uring!();
    let mut pool = Pool::builder(13)
        .count(1024)
        .buf_len(1024)
        .bundles(true)
        .build(&ring)
        .unwrap();
    let (rx, mut tx) = common::tcp_pair();
    let big: libc::c_int = 8 << 20;
    for (fd, opt) in [
        (rx.as_raw_fd(), libc::SO_RCVBUF),
        (tx.as_raw_fd(), libc::SO_SNDBUF),
    ] {
        // SAFETY: a valid socket and an int option of the right size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&big as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
    }
    let total = 700 * 1024;
    let mut pattern = common::Pattern::new(77);
    let mut data = vec![0u8; total];
    pattern.fill(&mut data);
    tx.write_all(&data).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut got = Vec::with_capacity(total);
    let mut most = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while got.len() < total {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out at {} bytes",
            got.len()
        );
        common::push(&mut ring, &pool.recv_bundle(rx.as_raw_fd()));
        for (_, res, flags) in common::reap(&mut ring, std::time::Duration::from_secs(5)) {
            match pool.reap(Cqe::new(res, flags)).unwrap() {
                Completion::Data { chunks, .. } => {
                    most = most.max(chunks.buffers());
                    for c in chunks {
                        got.extend_from_slice(&c);
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        pool.publish();
    }
    assert_eq!(got, data);
    eprintln!("most buffers in one bundle: {most}");
}

#[test]
fn forged_incremental_bundle_starts_at_the_cursor() {
    let ring = require_uring!();
    let mut pool = match Pool::builder(6)
        .count(4)
        .buf_len(4096)
        .incremental(Incremental::Kernel)
        .bundles(true)
        .build(&ring)
    {
        Ok(p) => p,
        Err(Error::Unsupported { .. }) => return,
        Err(e) => panic!("{e}"),
    };
    // 1000 bytes into bid 0, kept.
    let first = pool.reap(Cqe::new(1000, cqe_flags(0, F_BUF_MORE))).unwrap();
    // A bundle of 5000 from bid 0: 3096 at offset 1000, then 1904 of bid 1, kept.
    let chunks = match pool.reap(Cqe::new(5000, cqe_flags(0, F_BUF_MORE))).unwrap() {
        Completion::Data { chunks, .. } => chunks,
        other => panic!("{other:?}"),
    };
    let v: Vec<_> = chunks
        .map(|c| (c.bid(), c.offset(), c.len(), c.is_last()))
        .collect();
    assert_eq!(v, vec![(0, 1000, 3096, true), (1, 0, 1904, false)]);
    assert_eq!(pool.cursor(1), Some(1904));
    // F_BUF_MORE on a bundle that fills its last buffer exactly is impossible.
    let b = bad(pool.reap(Cqe::new(2192, cqe_flags(1, F_BUF_MORE))));
    assert!(
        matches!(b, BadCompletion::BufMoreWithoutSpace { bid: 1 }),
        "{b:?}"
    );
    drop(first);
}

#[test]
fn probe_reports_incremental_bundles_consistently() {
    let ring = require_uring!();
    let p = bufring::Probe::run_on(&ring);
    if p.incremental_bundles {
        assert!(p.incremental && p.bundles);
    }
    // A kernel-incremental pool for bundles builds exactly when the probe says so.
    let r = Pool::builder(9)
        .count(2)
        .buf_len(4096)
        .incremental(Incremental::Kernel)
        .bundles(true)
        .build(&ring);
    match r {
        Ok(_) => assert!(p.incremental_bundles),
        Err(Error::Unsupported { feature }) => {
            assert!(!p.incremental_bundles);
            assert!(matches!(
                feature,
                Feature::IncrementalBundles | Feature::Bundles | Feature::Incremental
            ));
        }
        Err(e) => panic!("{e}"),
    }
}
