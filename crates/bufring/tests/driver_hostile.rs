//! Completions the driver did not ask for, on the real kernel: another io_uring posts CQEs into
//! the driver's ring with IORING_OP_MSG_RING (as a hostile or buggy neighbour could, with
//! `unsafe`), naming no request, a receive that has ended (a duplicate of its final CQE), and a
//! live receive without a buffer. None of them reaches a pool as data; the real stream goes on
//! intact.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bufring::driver::{Driver, Event, Received};
use bufring::Pool;
use io_uring::{opcode, types::Fd, IoUring};

/// Posts a CQE (`user_data`, `res`, flags 0) into the ring behind `target` from `sender`;
/// `false` if this kernel refuses (no MSG_RING, or not into this kind of ring).
fn forge(sender: &mut IoUring, target: i32, user_data: u64, res: i32) -> bool {
    let e = opcode::MsgRingData::new(Fd(target), res, user_data, None)
        .build()
        .user_data(1);
    // SAFETY: a MSG_RING SQE points at no memory of ours; what it posts into the target ring is
    // exactly the forgery under test.
    unsafe { sender.submission().push(&e).unwrap() };
    sender.submit_and_wait(1).unwrap();
    let cqe = sender
        .completion()
        .next()
        .expect("the MSG_RING's own completion");
    if cqe.result() < 0 {
        eprintln!(
            "SKIPPED: MSG_RING into the driver's ring refused here ({})",
            std::io::Error::from_raw_os_error(-cqe.result())
        );
        return false;
    }
    true
}

fn settle(d: &mut Driver) {
    for _ in 0..5 {
        d.run_once(Some(Duration::from_millis(10))).unwrap();
    }
}

/// Proves stray, duplicate and buffer-less forged completions are dropped and counted, and
/// that the socket's data afterwards arrives byte for byte.
#[test]
fn forged_completions_never_reach_a_pool() {
    let Some(mut sender) = common::uring(8) else {
        return;
    };
    let mut d = Driver::builder().build().unwrap();
    let pool = d.add_pool(Pool::builder(0).count(8).buf_len(4096)).unwrap();
    let (a, mut peer) = common::tcp_pair();
    let s = d.socket(a);
    d.recv(s, pool).unwrap();
    settle(&mut d);
    let fd = d.as_raw_fd();
    let live = d.recv_user_data(s).expect("a receive in flight");

    // A user_data that names no request.
    if !forge(&mut sender, fd, 0x7777_0000_0000_4321, 100) {
        return;
    }
    settle(&mut d);
    assert_eq!(d.stats().stray, 1, "{:?}", d.stats());

    // A live receive's user_data with bytes but no buffer (flags 0): refused by the pool.
    assert!(forge(&mut sender, fd, live, 100));
    settle(&mut d);
    assert_eq!(d.stats().rejected, 1, "{:?}", d.stats());
    assert!(d.read(s).unwrap().is_none(), "no data may come of it");
    assert_eq!(d.pool_stats()[0].completions, 0);

    // The real stream is intact.
    peer.write_all(b"real bytes").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < 10 {
        assert!(Instant::now() < deadline, "{:?}", d.stats());
        d.run_once(Some(Duration::from_millis(20))).unwrap();
        while let Some(Received::Data(c)) = d.read(s).unwrap() {
            got.extend_from_slice(&c);
        }
    }
    assert_eq!(got, b"real bytes");

    // The stream ends; a duplicate of the receive's final completion is stray.
    let ended = d.recv_user_data(s).expect("still receiving");
    drop(peer);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !matches!(d.read(s).unwrap(), Some(Received::End)) {
        assert!(Instant::now() < deadline);
        d.run_once(Some(Duration::from_millis(20))).unwrap();
    }
    assert!(d.recv_user_data(s).is_none(), "the receive has ended");
    while d.next_event().is_some() {}
    let stray = d.stats().stray;
    assert!(forge(&mut sender, fd, ended, 0));
    settle(&mut d);
    assert_eq!(d.stats().stray, stray + 1);
    while let Some(ev) = d.next_event() {
        assert!(
            !matches!(ev, Event::Readable { .. }),
            "a forged end of stream surfaced: {ev:?}"
        );
    }
    assert_eq!(d.pool_stats()[0].rejected, 1);
}
