//! The raw pool's side of elastic posting on the real kernel: a posted target smaller than the
//! pool, parking of returned buffers, trimming of idle ones (their pages really leave RAM), and
//! chunks on the heap.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bufring::{Chunk, Completion, Pool};
use common::{push, reap, Reap};

/// Receives one completion of a single-shot receive on `fd`.
fn recv_one(ring: &mut io_uring::IoUring, pool: &mut Pool, fd: i32) -> Completion {
    push(ring, &pool.recv(fd));
    let cqes = reap(ring, Duration::from_secs(5));
    assert_eq!(cqes.len(), 1);
    let (_, res, flags) = cqes[0];
    pool.reap(bufring::Cqe::new(res, flags))
        .expect("kernel completion")
}

/// Proves the pool posts only its target: two of eight buffers posted, a third receive finds
/// the ring empty; raising the target posts parked buffers; returns beyond the target park;
/// and every buffer is always in exactly one place (kernel, application, parked).
#[test]
fn the_posted_target_bounds_what_the_kernel_holds() {
    let mut ring = require_uring!();
    let mut pool = Pool::builder(0)
        .count(8)
        .buf_len(4096)
        .posted(2)
        .build(&ring)
        .unwrap();
    let (a, mut b) = common::tcp_pair();
    let s = pool.stats();
    assert_eq!((s.in_kernel, s.parked, s.posted_target), (2, 6, 2));
    let mut held = Vec::new();
    for _ in 0..2 {
        b.write_all(&[5u8; 4096]).unwrap();
        match recv_one(&mut ring, &mut pool, a.as_raw_fd()) {
            Completion::Data { chunks, .. } => held.push(common::one(chunks)),
            other => panic!("{other:?}"),
        }
    }
    b.write_all(&[6u8; 100]).unwrap();
    assert!(matches!(
        recv_one(&mut ring, &mut pool, a.as_raw_fd()),
        Completion::NoBuffers
    ));
    assert_eq!(pool.set_posted_target(4), 4);
    assert_eq!(pool.publish(), 4);
    let s = pool.stats();
    assert_eq!((s.in_kernel, s.with_app, s.parked), (4, 2, 2));
    drop(held);
    pool.publish();
    let s = pool.stats();
    assert_eq!(
        (s.in_kernel, s.with_app, s.parked),
        (4, 0, 4),
        "returns beyond the target park"
    );
    assert_eq!(
        pool.set_posted_target(0),
        1,
        "at least one buffer stays posted"
    );
    assert_eq!(pool.set_posted_target(100), 8, "at most the pool");
    assert!(matches!(
        Pool::builder(1).count(4).posted(0).build(&ring),
        Err(bufring::Error::InvalidConfig {
            field: "posted",
            ..
        })
    ));
}

/// Proves `trim_idle` gives back the pages of buffers that stayed parked since the previous
/// call, and only those: resident memory (mincore) drops by exactly their size.
#[test]
fn trim_idle_gives_back_pages_of_buffers_parked_all_along() {
    let mut ring = require_uring!();
    let mut pool = Pool::builder(0)
        .count(4)
        .buf_len(4096)
        .build(&ring)
        .unwrap();
    let (a, mut b) = common::tcp_pair();
    let mut held = Vec::new();
    for _ in 0..4 {
        b.write_all(&[7u8; 4096]).unwrap();
        match recv_one(&mut ring, &mut pool, a.as_raw_fd()) {
            Completion::Data { chunks, .. } => held.push(common::one(chunks)),
            other => panic!("{other:?}"),
        }
    }
    let touched = pool.resident_bytes().unwrap();
    assert_eq!(touched, 4 * 4096, "the kernel wrote all four buffers");
    pool.set_posted_target(1);
    drop(held);
    pool.publish();
    assert_eq!(pool.stats().parked, 3);
    assert_eq!(pool.trim_idle(), 0, "not yet parked for a whole window");
    assert_eq!(pool.trim_idle(), 3 * 4096);
    assert_eq!(pool.resident_bytes().unwrap(), 4096);
    assert_eq!(pool.stats().trimmed_bytes, 3 * 4096);
    assert_eq!(pool.trim_idle(), 0, "already given back");
    // A trimmed buffer comes back to use as zeros, and works.
    pool.set_posted_target(4);
    pool.publish();
    b.write_all(&[8u8; 10]).unwrap();
    match recv_one(&mut ring, &mut pool, a.as_raw_fd()) {
        Completion::Data { chunks, .. } => assert_eq!(&common::one(chunks)[..], &[8u8; 10]),
        other => panic!("{other:?}"),
    }
}

/// Proves heap chunks behave as chunks: a vector becomes one without a copy, a pool chunk's
/// heap copy outlives the buffer it came from (which goes back to the pool at once), and both
/// convert to `Bytes`.
#[test]
fn heap_chunks_hold_their_bytes_and_free_the_buffer() {
    let mut ring = require_uring!();
    let mut pool = Pool::builder(0)
        .count(1)
        .buf_len(4096)
        .build(&ring)
        .unwrap();
    let v = b"on the heap".to_vec();
    let ptr = v.as_ptr();
    let c = Chunk::try_from(v).unwrap();
    assert!(!c.in_pool());
    assert_eq!(c.as_ptr(), ptr, "no copy");
    assert_eq!(&c[..], b"on the heap");
    let bytes = bytes::Bytes::from_owner(c);
    assert_eq!(&bytes[..], b"on the heap");

    let (a, mut b) = common::tcp_pair();
    b.write_all(b"from the pool").unwrap();
    let pooled = match recv_one(&mut ring, &mut pool, a.as_raw_fd()) {
        Completion::Data { chunks, .. } => common::one(chunks),
        other => panic!("{other:?}"),
    };
    assert!(pooled.in_pool());
    let mut copy = pooled.to_heap();
    drop(pooled);
    assert_eq!(
        pool.publish(),
        1,
        "the buffer went back while its copy lives"
    );
    b.write_all(b"again").unwrap();
    assert!(matches!(
        recv_one(&mut ring, &mut pool, a.as_raw_fd()),
        Completion::Data { .. }
    ));
    assert_eq!(&copy[..], b"from the pool");
    let tail = copy.split_off(5);
    assert_eq!((&copy[..], &tail[..]), (&b"from "[..], &b"the pool"[..]));
    drop(pool);
    assert_eq!(&tail[..], b"the pool", "heap chunks outlive the pool");
}
