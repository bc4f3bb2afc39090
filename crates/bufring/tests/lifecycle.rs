//! Exhaustion and re-arm, end of stream, peer reset, the pool dropped while chunks live, and
//! the ring's head/available, on the real kernel.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bufring::Cqe;
use bufring::{Chunk, Completion, Incremental, Pool};
use common::Checker;
#[allow(unused_imports)]
use common::{one, Reap};

macro_rules! ring_or_return {
    () => {
        match common::uring(64) {
            Some(r) => r,
            None => return,
        }
    };
}

fn exhaustion(mode: Incremental) {
    let mut ring = ring_or_return!();
    let mut pool = Pool::builder(9)
        .count(2)
        .buf_len(4096)
        .incremental(mode)
        .build(&ring)
        .unwrap();
    let (rx, tx) = common::tcp_pair();
    let total = 1 << 20;
    let sender = std::thread::spawn(move || common::send_pattern(tx, total, 8192, 5));
    let mut check = Checker::new(5);
    let mut held: Vec<Chunk> = Vec::new();
    let mut enobufs = 0;
    let mut armed = true;
    common::push(&mut ring, &pool.recv_multishot(rx.as_raw_fd()));
    let deadline = Instant::now() + Duration::from_secs(60);
    'outer: loop {
        assert!(Instant::now() < deadline, "timed out");
        for (_, res, flags) in common::reap(&mut ring, Duration::from_millis(100)) {
            match pool.reap(Cqe::new(res, flags)).unwrap() {
                Completion::Data { chunks, more } => {
                    let chunk = one(chunks);
                    check.check(&chunk);
                    // Hold everything: the ring must run dry.
                    held.push(chunk);
                    if !more {
                        armed = false;
                    }
                }
                Completion::NoBuffers => {
                    enobufs += 1;
                    armed = false;
                    // The ring is empty and nothing was lost: give everything back, re-arm.
                    assert_eq!(pool.stats().in_kernel, 0);
                    held.clear();
                }
                Completion::EndOfStream => break 'outer,
                Completion::Failed(e) => panic!("{e}"),
            }
        }
        pool.publish();
        if !armed {
            assert!(pool.stats().in_kernel > 0 || !held.is_empty());
            held.clear();
            pool.publish();
            common::push(&mut ring, &pool.recv_multishot(rx.as_raw_fd()));
            armed = true;
        }
    }
    sender.join().unwrap().unwrap();
    assert_eq!(check.received, total, "every byte arrives, in order");
    assert!(enobufs > 0, "a 2-buffer pool must run dry");
    assert_eq!(pool.stats().enobufs, enobufs);
}

#[test]
fn exhaustion_rearm_nothing_lost_incremental() {
    exhaustion(Incremental::Kernel);
}

#[test]
fn exhaustion_rearm_nothing_lost_classic() {
    exhaustion(Incremental::Off);
}

#[test]
fn end_of_stream() {
    let mut ring = ring_or_return!();
    let mut pool = Pool::builder(1)
        .count(4)
        .buf_len(1024)
        .build(&ring)
        .unwrap();
    let (rx, mut tx) = common::tcp_pair();
    common::push(&mut ring, &pool.recv_multishot(rx.as_raw_fd()));
    tx.write_all(b"hello").unwrap();
    drop(tx);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline);
        let mut eof = false;
        for (_, res, flags) in common::reap(&mut ring, Duration::from_millis(100)) {
            match pool.reap(Cqe::new(res, flags)).unwrap() {
                Completion::Data { chunks, .. } => chunks.for_each(|c| got.extend_from_slice(&c)),
                Completion::EndOfStream => eof = true,
                other => panic!("{other:?}"),
            }
        }
        if eof {
            break;
        }
    }
    assert_eq!(got, b"hello");
    pool.publish();
    assert_eq!(
        pool.stats().in_kernel,
        4,
        "the EOF completion took no buffer"
    );
}

#[test]
fn peer_reset_is_an_error_and_loses_no_buffer() {
    let mut ring = ring_or_return!();
    let mut pool = Pool::builder(1)
        .count(4)
        .buf_len(1024)
        .incremental(Incremental::Kernel)
        .build(&ring)
        .unwrap();
    let (rx, mut tx) = common::tcp_pair();
    common::push(&mut ring, &pool.recv_multishot(rx.as_raw_fd()));
    tx.write_all(b"abc").unwrap();
    // Wait for the data, then reset: SO_LINGER 0 makes close() send RST.
    let mut got = 0;
    while got < 3 {
        for (_, res, flags) in common::reap(&mut ring, Duration::from_secs(5)) {
            got += pool.reap_chunk(Cqe::new(res, flags)).len();
        }
    }
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the right size.
    let r = unsafe {
        libc::setsockopt(
            tx.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(r, 0);
    drop(tx);
    let mut err = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while err.is_none() {
        assert!(Instant::now() < deadline);
        for (_, res, flags) in common::reap(&mut ring, Duration::from_millis(100)) {
            match pool.reap(Cqe::new(res, flags)).unwrap() {
                Completion::Failed(e) => err = Some(e),
                Completion::EndOfStream => panic!("a reset is not an orderly end of stream"),
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(err.unwrap().raw_os_error(), Some(libc::ECONNRESET));
    pool.publish();
    let s = pool.stats();
    // The partly used buffer stays with the kernel; nothing is lost.
    assert_eq!(s.in_kernel + s.with_app, 4, "{s:?}");
}

#[test]
fn chunks_outlive_the_pool() {
    let mut ring = ring_or_return!();
    let mut pool = Pool::builder(2)
        .count(2)
        .buf_len(8192)
        .build(&ring)
        .unwrap();
    let (rx, mut tx) = common::tcp_pair();
    common::push(&mut ring, &pool.recv(rx.as_raw_fd()));
    tx.write_all(&[0x5a; 3000]).unwrap();
    let (_, res, flags) = common::reap(&mut ring, Duration::from_secs(5))[0];
    let chunk = pool.reap_chunk(Cqe::new(res, flags));
    drop(pool);
    drop(ring);
    // Move it to another thread too: still valid memory.
    let sum = std::thread::spawn(move || chunk.iter().map(|&b| b as u64).sum::<u64>())
        .join()
        .unwrap();
    assert_eq!(sum, 3000 * 0x5a);
}

#[test]
fn head_and_available_follow_the_kernel() {
    let mut ring = ring_or_return!();
    let mut pool = Pool::builder(5)
        .count(8)
        .buf_len(1024)
        .build(&ring)
        .unwrap();
    assert_eq!(pool.ring().unwrap().available().unwrap(), 8);
    assert_eq!(pool.ring().unwrap().head().unwrap(), 0);
    let (rx, mut tx) = common::tcp_pair();
    let mut chunks = Vec::new();
    for i in 0..3u8 {
        common::push(&mut ring, &pool.recv(rx.as_raw_fd()));
        tx.write_all(&[i; 100]).unwrap();
        let (_, res, flags) = common::reap(&mut ring, Duration::from_secs(5))[0];
        chunks.push(pool.reap_chunk(Cqe::new(res, flags)));
    }
    assert_eq!(pool.ring().unwrap().head().unwrap(), 3);
    assert_eq!(pool.ring().unwrap().available().unwrap(), 5);
    chunks.clear();
    assert_eq!(pool.publish(), 3);
    assert_eq!(pool.ring().unwrap().available().unwrap(), 8);
    assert_eq!(pool.ring().unwrap().tail(), 11);
}

#[test]
fn repeated_create_and_teardown_reuses_the_bgid() {
    let ring = ring_or_return!();
    for i in 0..200 {
        let pool = Pool::builder(11)
            .count(4)
            .buf_len(4096)
            .incremental(if i % 2 == 0 {
                Incremental::Kernel
            } else {
                Incremental::Off
            })
            .kernel_allocated(i % 3 == 0)
            .build(&ring)
            .unwrap();
        drop(pool);
    }
}

#[test]
fn a_chunk_becomes_bytes_without_a_copy() {
    let mut ring = ring_or_return!();
    let mut pool = Pool::builder(12)
        .count(2)
        .buf_len(4096)
        .build(&ring)
        .unwrap();
    let (rx, mut tx) = common::tcp_pair();
    common::push(&mut ring, &pool.recv(rx.as_raw_fd()));
    tx.write_all(b"zero copy").unwrap();
    let (_, res, flags) = common::reap(&mut ring, Duration::from_secs(5))[0];
    let chunk = pool.reap_chunk(Cqe::new(res, flags));
    let addr = chunk.as_ptr();
    let bytes = bytes::Bytes::from_owner(chunk);
    assert_eq!(&bytes[..], b"zero copy");
    assert_eq!(bytes.as_ptr(), addr, "the same memory, not a copy");
    drop(bytes);
    assert_eq!(
        pool.publish(),
        1,
        "dropping the Bytes gives the buffer back"
    );
}

/// A pool dropped on another thread than the owner of an IORING_SETUP_SINGLE_ISSUER ring: the
/// kernel refuses the unregister (EEXIST) and keeps the ring, with a receive armed on it. The
/// pool must not unmap memory the kernel may still write: it leaks it, and says so in
/// `bufring::leaks()`. Data that arrives afterwards lands in that leaked memory, harmlessly.
#[test]
fn pool_dropped_off_a_single_issuer_thread_leaks_instead_of_freeing() {
    let Some(mut ring) = single_issuer_ring() else {
        return;
    };
    let (sock, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let pool = Pool::builder(41)
        .count(4)
        .buf_len(4096)
        .build(&ring)
        .unwrap();
    common::push(
        &mut ring,
        &pool.recv_multishot(sock.as_raw_fd()).user_data(7),
    );
    let before = bufring::leaks();
    std::thread::spawn(move || drop(pool)).join().unwrap();
    let after = bufring::leaks();
    // (`>=`: other tests of this binary run in parallel; none of them leaks.)
    assert!(
        after.pools > before.pools,
        "the refused unregister is counted"
    );
    assert!(
        after.bytes - before.bytes >= 4 * 4096,
        "the buffers (and ring) are leaked: {after:?}"
    );
    // The kernel still has the ring and the armed receive: it writes into the leaked buffers.
    peer.write_all(b"still mapped").unwrap();
    let cqes = common::reap(&mut ring, Duration::from_secs(5));
    assert!(
        cqes.iter().any(|&(ud, res, _)| ud == 7 && res == 12),
        "{cqes:?}"
    );
}

/// The same drop on the owner's thread unregisters and frees: nothing is leaked.
#[test]
fn pool_dropped_on_the_single_issuer_thread_frees() {
    let Some(ring) = single_issuer_ring() else {
        return;
    };
    let pool = Pool::builder(42)
        .count(4)
        .buf_len(4096)
        .build(&ring)
        .unwrap();
    drop(pool);
    // Other tests in this binary may leak in parallel: only this pool's bgid matters, so
    // check it can be registered again (the ring was really unregistered).
    let again = Pool::builder(42).count(4).buf_len(4096).build(&ring);
    assert!(again.is_ok(), "bgid 42 still registered: {again:?}");
}

/// An io_uring with IORING_SETUP_SINGLE_ISSUER (Linux 6.0), or `None` with a message.
fn single_issuer_ring() -> Option<io_uring::IoUring> {
    common::uring(8)?;
    match io_uring::IoUring::builder().setup_single_issuer().build(8) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("SKIPPED: IORING_SETUP_SINGLE_ISSUER refused here ({e})");
            None
        }
    }
}

/// `Pool::close` off the owner thread of a SINGLE_ISSUER ring hands the pool back with the
/// kernel's EEXIST instead of leaking it; closed again on the owner thread, it unregisters and
/// frees.
#[test]
fn close_off_the_single_issuer_thread_hands_the_pool_back() {
    let Some(ring) = single_issuer_ring() else {
        return;
    };
    let pool = Pool::builder(43)
        .count(4)
        .buf_len(4096)
        .build(&ring)
        .unwrap();
    let back = std::thread::spawn(move || match pool.close() {
        Ok(()) => panic!("the kernel let another thread unregister a SINGLE_ISSUER ring"),
        Err((pool, e)) => {
            assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
            pool
        }
    })
    .join()
    .unwrap();
    // Unregistered for real (no leak: the drop after an `Ok` close frees everything), so the
    // bgid is free again. (`leaks()` is process-wide, and another test here leaks on purpose.)
    back.close().map_err(|(_, e)| e).unwrap();
    assert!(Pool::builder(43)
        .count(4)
        .buf_len(4096)
        .build(&ring)
        .is_ok());
}
