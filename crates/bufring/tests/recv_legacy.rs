//! Legacy provided buffers (PROVIDE_BUFFERS / REMOVE_BUFFERS), forced on this kernel: the same
//! chunk API, buffers handed back to the user's ring as batched SQEs, data intact through
//! exhaustion and re-arm, classic and emulated-incremental.

mod common;
mod recvkit;

use std::time::Duration;

use bufring::Cqe;
use bufring::{Backend, Completion, Incremental, Pool};
#[allow(unused_imports)]
use common::{one, Reap};

fn legacy(ring: &io_uring::IoUring, bgid: u16, mode: Incremental) -> Pool {
    Pool::builder(bgid)
        .count(8)
        .buf_len(16 * 1024)
        .incremental(mode)
        .backend(Backend::Legacy)
        .build(ring)
        .unwrap()
}

fn stream(mode: Incremental) {
    let mut ring = require_uring!();
    let mut pool = legacy(&ring, 7, mode);
    assert_eq!(pool.backend(), Backend::Legacy);
    assert!(pool.ring().is_none());
    let seen = recvkit::one_stream(&mut ring, &mut pool, 12 << 20, 48 * 1024, false, 5);
    let s = pool.stats();
    eprintln!("{mode:?}: {seen:?} {s:?}");
    assert_eq!(s.rejected, 0);
    assert!(seen.enobufs > 0, "the group never ran dry");
    assert_eq!(s.with_app, 0);
    if mode == Incremental::Emulated {
        // Small paced writes: buffers serve several completions, through re-provided rests.
        let paced = recvkit::one_paced_stream(&mut ring, &mut pool, 2 << 20, 3000, 3);
        eprintln!("paced: {paced:?} {:?}", pool.stats());
        assert!(paced.partial_chunks > 0);
        assert!(pool.stats().emulated_reposts > 0);
        assert_eq!(pool.stats().rejected, 0);
    }
    teardown(&mut ring, &mut pool);
}

/// Takes every buffer back from the kernel, so the pool may free its memory.
fn teardown(ring: &mut io_uring::IoUring, pool: &mut Pool) {
    let sqe = pool.remove_buffers().expect("the kernel holds buffers");
    recvkit::push_ud(ring, sqe, 99);
    let cqes = common::reap(ring, Duration::from_secs(5));
    let (_, res, _) = cqes.into_iter().find(|c| c.0 == 99).unwrap();
    assert_eq!(res, 8, "REMOVE_BUFFERS took {res}");
    pool.buffers_removed(res);
    assert!(pool.remove_buffers().is_none());
}

#[test]
fn legacy_classic_stream() {
    stream(Incremental::Off);
}

#[test]
fn legacy_emulated_bundle_api() {
    let mut ring = require_uring!();
    let mut pool = legacy(&ring, 13, Incremental::Emulated);
    let seen = recvkit::one_stream(&mut ring, &mut pool, 4 << 20, 64 * 1024, true, 3);
    eprintln!("{seen:?} {:?}", pool.stats());
    // Bundle receives fall back to plain ones on legacy pools.
    assert_eq!(seen.multi_buffer_bundles, 0);
    teardown(&mut ring, &mut pool);
}

#[test]
fn legacy_emulated_stream() {
    stream(Incremental::Emulated);
}

#[test]
fn legacy_provide_is_batched() {
    let ring = require_uring!();
    let mut pool = legacy(&ring, 8, Incremental::Off);
    // All 8 buffers are consecutive: one SQE.
    let mut sqes = Vec::new();
    assert_eq!(
        pool.provide(|s| {
            sqes.push(s);
            true
        }),
        1
    );
    // A full submission queue: nothing is lost, it comes again next time.
    let mut pool = legacy(&ring, 9, Incremental::Off);
    assert_eq!(pool.provide(|_| false), 0);
    assert_eq!(pool.provide(|_| true), 1);
    assert_eq!(pool.provide(|_| true), 0);
    // Forged completions retire bids 1, 2 and 5: two runs, two SQEs.
    for bid in [5u32, 1, 2] {
        drop(pool.reap(Cqe::new(10, 1 | (bid << 16))).unwrap());
    }
    assert_eq!(pool.publish(), 3);
    assert_eq!(pool.provide(|_| true), 2);
    // Ring pools have nothing to provide.
    let mut ringpool = Pool::builder(10)
        .count(2)
        .buf_len(64)
        .backend(Backend::Ring)
        .build(&ring)
        .unwrap();
    assert_eq!(ringpool.provide(|_| panic!("no SQEs for rings")), 0);
    assert!(ringpool.remove_buffers().is_none());
}

#[test]
fn legacy_bundle_api_falls_back_to_plain_receives() {
    let mut ring = require_uring!();
    let mut pool = legacy(&ring, 11, Incremental::Off);
    recvkit::publish(&mut ring, &mut pool);
    let (rx, tx) = common::tcp_pair();
    let sender = std::thread::spawn(move || common::send_pattern(tx, 200_000, 50_000, 3));
    let mut check = common::Checker::new(3);

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    use std::os::fd::AsRawFd;
    recvkit::push_ud(&mut ring, pool.recv_bundle(rx.as_raw_fd()), 1);
    'outer: loop {
        assert!(std::time::Instant::now() < deadline);
        for (ud, res, flags) in common::reap(&mut ring, Duration::from_millis(200)) {
            if ud != 1 {
                continue;
            }
            match pool.reap(Cqe::new(res, flags)).unwrap() {
                Completion::Data { chunks, .. } => {
                    assert_eq!(chunks.buffers(), 1);
                    for c in chunks {
                        check.check(&c);
                    }
                }
                Completion::EndOfStream => break 'outer,
                Completion::NoBuffers => {}
                Completion::Failed(e) => panic!("{e}"),
            }
            recvkit::publish(&mut ring, &mut pool);
            recvkit::push_ud(&mut ring, pool.recv_bundle(rx.as_raw_fd()), 1);
        }
    }
    sender.join().unwrap().unwrap();
    assert_eq!(check.received, 200_000);

    recvkit::publish(&mut ring, &mut pool);
    common::reap(&mut ring, Duration::from_millis(100));
    teardown(&mut ring, &mut pool);
}

#[test]
fn legacy_multishot_bundle_stream() {
    let mut ring = require_uring!();
    let mut pool = legacy(&ring, 12, Incremental::Off);
    let seen = recvkit::one_stream(&mut ring, &mut pool, 4 << 20, 64 * 1024, true, 3);
    eprintln!("{seen:?} {:?}", pool.stats());
    // Bundle receives fall back to plain ones on legacy pools.
    assert_eq!(seen.multi_buffer_bundles, 0);
    teardown(&mut ring, &mut pool);
}
