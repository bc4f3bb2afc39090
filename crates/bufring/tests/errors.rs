//! Bad configurations, a bgid in use, and forged completions: each gives a typed error, never a
//! panic, and a rejected completion changes nothing.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bufring::Cqe;
#[allow(unused_imports)]
use common::{one, Reap};

// CQE flags, as the uapi header defines them.
const IORING_CQE_F_BUFFER: u32 = 1 << 0;
const IORING_CQE_F_MORE: u32 = 1 << 1;
const IORING_CQE_F_BUF_MORE: u32 = 1 << 4;
use bufring::{BadCompletion, BufRing, Completion, Error, HugePages, Incremental, Pool};

macro_rules! ring_or_return {
    () => {
        match common::uring(16) {
            Some(r) => r,
            None => return,
        }
    };
}

fn config_field(e: Error) -> &'static str {
    match e {
        Error::InvalidConfig { field, .. } => field,
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn bad_ring_entries() {
    for entries in [0u32, 3, 65536, 40000] {
        let b = BufRing::builder(1, entries);
        assert_eq!(
            config_field(b.validate().unwrap_err()),
            "ring_entries",
            "{entries}"
        );
        let p = Pool::builder(1).count(1).ring_entries(entries);
        assert_eq!(
            config_field(p.validate().unwrap_err()),
            "ring_entries",
            "{entries}"
        );
    }
    // The same errors come back from a real build, before any kernel call.
    let ring = ring_or_return!();
    let e = Pool::builder(1)
        .count(2)
        .ring_entries(3)
        .build(&ring)
        .unwrap_err();
    assert_eq!(config_field(e), "ring_entries");
}

#[test]
fn bad_pool_sizes() {
    let cases = [
        (Pool::builder(1).count(0), "count"),
        (Pool::builder(1).count(40000), "count"),
        (Pool::builder(1).count(9).ring_entries(8), "count"),
        (Pool::builder(1).buf_len(0), "buf_len"),
        (Pool::builder(1).count(2).buf_len(1 << 33), "buf_len"),
        (
            Pool::builder(1).count(32768).buf_len(usize::MAX / 2),
            "buf_len",
        ),
        (Pool::builder(1).min_left(16), "min_left"),
        (Pool::builder(4000).kernel_allocated(true), "bgid"),
    ];
    for (i, (b, field)) in cases.iter().enumerate() {
        assert_eq!(config_field(b.validate().unwrap_err()), *field, "case {i}");
    }
    let e = Pool::builder(1).count(0).validate().unwrap_err();
    assert!(e.to_string().contains("count"), "{e}");
}

#[test]
fn bgid_in_use_is_eexist() {
    let ring = ring_or_return!();
    let _first = Pool::builder(3).count(2).buf_len(64).build(&ring).unwrap();
    let e = Pool::builder(3)
        .count(2)
        .buf_len(64)
        .build(&ring)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
    assert!(e.to_string().contains("already in use"), "{e}");
    // Another bgid is fine; the same bgid on another io_uring too.
    let _other = Pool::builder(4).count(2).buf_len(64).build(&ring).unwrap();
    let ring2 = common::uring(8).unwrap();
    let _third = Pool::builder(3).count(2).buf_len(64).build(&ring2).unwrap();
}

#[test]
fn explicit_huge_pages_work_or_say_why() {
    let ring = ring_or_return!();
    match Pool::builder(6)
        .count(4)
        .buf_len(1 << 20)
        .huge_pages(HugePages::Explicit)
        .build(&ring)
    {
        Ok(p) => assert_eq!(p.count(), 4),
        Err(Error::Unsupported { feature }) => assert_eq!(feature, bufring::Feature::HugePages),
        Err(e) => panic!("unexpected {e:?}"),
    }
    let p = Pool::builder(7)
        .count(4)
        .buf_len(1 << 20)
        .huge_pages(HugePages::Transparent)
        .build(&ring)
        .unwrap();
    assert_eq!(p.buf_len(), 1 << 20);
}

#[test]
fn not_a_ring_fd_is_a_kernel_error() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let e = Pool::builder(1).count(1).build(&a).unwrap_err();
    assert!(
        matches!(e, Error::Kernel { .. } | Error::Unsupported { .. }),
        "{e:?}"
    );
}

fn flags(bid: u16, extra: u32) -> u32 {
    IORING_CQE_F_BUFFER | (u32::from(bid) << 16) | extra
}

fn bad(r: Result<Completion, Error>) -> BadCompletion {
    match r {
        Err(Error::BadCompletion(b)) => b,
        other => panic!("expected a rejected completion, got {other:?}"),
    }
}

#[test]
fn forged_completions_are_rejected_and_change_nothing() {
    let ring = ring_or_return!();
    let mut classic = Pool::builder(1)
        .count(4)
        .buf_len(1000)
        .build(&ring)
        .unwrap();
    let before = classic.stats();
    assert_eq!(
        bad(classic.reap(Cqe::new(10, flags(4, 0)))),
        BadCompletion::BidOutOfRange { bid: 4, count: 4 }
    );
    assert_eq!(
        bad(classic.reap(Cqe::new(10, flags(u16::MAX, IORING_CQE_F_MORE)))),
        BadCompletion::BidOutOfRange {
            bid: u16::MAX,
            count: 4
        }
    );
    assert_eq!(
        bad(classic.reap(Cqe::new(1001, flags(0, 0)))),
        BadCompletion::TooLong {
            bid: 0,
            res: 1001,
            space: 1000
        }
    );
    assert_eq!(
        bad(classic.reap(Cqe::new(i32::MAX, flags(0, 0)))),
        BadCompletion::TooLong {
            bid: 0,
            res: i32::MAX,
            space: 1000
        }
    );
    assert_eq!(
        bad(classic.reap(Cqe::new(10, flags(1, IORING_CQE_F_BUF_MORE)))),
        BadCompletion::BufMoreOnClassicPool { bid: 1 }
    );
    assert_eq!(
        bad(classic.reap(Cqe::new(10, IORING_CQE_F_MORE))),
        BadCompletion::DataWithoutBuffer { res: 10 }
    );
    let after = classic.stats();
    assert_eq!(after.rejected, 6);
    assert_eq!(
        without_rejects(after),
        without_rejects(before),
        "a rejected completion changes nothing"
    );
    // A genuine completion for bid 0 is still accepted; a second one for the same bid is not
    // (the kernel no longer holds it).
    let c = classic.reap_chunk(Cqe::new(1000, flags(0, 0)));
    assert_eq!(c.len(), 1000);
    assert_eq!(
        bad(classic.reap(Cqe::new(5, flags(0, 0)))),
        BadCompletion::BidNotHeldByKernel { bid: 0 }
    );
    drop(c);
    classic.publish();
    assert!(
        classic.reap(Cqe::new(5, flags(0, 0))).is_ok(),
        "bid 0 is posted again"
    );

    let mut inc = Pool::builder(2)
        .count(2)
        .buf_len(1000)
        .incremental(Incremental::Kernel)
        .build(&ring)
        .unwrap();
    let a = inc.reap_chunk(Cqe::new(600, flags(1, IORING_CQE_F_BUF_MORE)));
    assert_eq!((a.offset(), a.len()), (0, 600));
    // 400 bytes left in bid 1: 401 is a lie.
    assert_eq!(
        bad(inc.reap(Cqe::new(401, flags(1, IORING_CQE_F_BUF_MORE)))),
        BadCompletion::TooLong {
            bid: 1,
            res: 401,
            space: 400
        }
    );
    assert_eq!(inc.cursor(1), Some(600));
    let b = inc.reap_chunk(Cqe::new(400, flags(1, 0)));
    assert_eq!((b.offset(), b.len(), b.is_last()), (600, 400, true));
    assert_eq!(
        bad(inc.reap(Cqe::new(1, flags(1, IORING_CQE_F_BUF_MORE)))),
        BadCompletion::BidNotHeldByKernel { bid: 1 }
    );
    assert_eq!(inc.stats().rejected, 2);
}

/// PoolStats with the `rejected` counter zeroed, to compare everything else.
fn without_rejects(mut s: bufring::PoolStats) -> bufring::PoolStats {
    s.rejected = 0;
    s
}

#[test]
fn negative_results_are_outcomes_not_rejections() {
    let ring = ring_or_return!();
    let mut pool = Pool::builder(1).count(2).buf_len(100).build(&ring).unwrap();
    assert!(matches!(
        pool.reap(Cqe::new(-libc::ENOBUFS, 0)).unwrap(),
        Completion::NoBuffers
    ));
    match pool.reap(Cqe::new(-libc::ECONNRESET, 0)).unwrap() {
        Completion::Failed(e) => assert_eq!(e.raw_os_error(), Some(libc::ECONNRESET)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        pool.reap(Cqe::new(0, 0)).unwrap(),
        Completion::EndOfStream
    ));
    assert_eq!(pool.stats().enobufs, 1);
    // An error that still names a buffer: the buffer is accounted as retired, not lost.
    assert!(matches!(
        pool.reap(Cqe::new(-libc::EIO, flags(0, 0))).unwrap(),
        Completion::Failed(_)
    ));
    assert_eq!(pool.publish(), 1, "the buffer goes straight back");
    assert_eq!(pool.stats().in_kernel, 2);
}

#[test]
fn real_traffic_after_forgeries() {
    let mut ring = ring_or_return!();
    let mut pool = Pool::builder(8).count(4).buf_len(512).build(&ring).unwrap();
    let _ = pool.reap(Cqe::new(100, flags(9, 0)));
    let _ = pool.reap(Cqe::new(10_000, flags(0, 0)));
    let (rx, mut tx) = common::tcp_pair();
    common::push(&mut ring, &pool.recv(rx.as_raw_fd()));
    tx.write_all(b"still fine").unwrap();
    let (_, res, f) = common::reap(&mut ring, Duration::from_secs(5))[0];
    let c = pool.reap_chunk(Cqe::new(res, f));
    assert_eq!(&c[..], b"still fine");
}
