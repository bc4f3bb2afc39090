//! recvmsg multishot on emulated incremental pools and on legacy provided buffers.

mod common;

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bufring::Cqe;
use bufring::{Backend, Completion, Error, Incremental, Pool, RecvMsg};
use common::Pattern;
#[allow(unused_imports)]
use common::{one, Reap};

const PROVIDE: u64 = 0xfeed;

fn datagram(seq: u32) -> Vec<u8> {
    let len = 4 + Pattern::new(u64::from(seq) ^ 0xabcd).next_u64() as usize % 1397;
    let mut v = vec![0u8; len];
    v[..4].copy_from_slice(&seq.to_be_bytes());
    Pattern::new(u64::from(seq) + 1).fill(&mut v[4..]);
    v
}

fn run(incremental: Incremental, backend: Backend, min_left: bool) -> (u64, f64, u32) {
    let mut ring = common::uring(256).unwrap();
    let msg = RecvMsg::new(RecvMsg::INET6_NAME_LEN, 0).unwrap();
    let mut b = Pool::builder(40)
        .count(4)
        .buf_len(16 * 1024)
        .incremental(incremental)
        .backend(backend);
    if min_left {
        b = b.min_left(msg.min_left_for(1400));
    }
    let mut pool = b.build(&ring).unwrap();
    let provide = |pool: &mut Pool, ring: &mut io_uring::IoUring| {
        pool.provide(|sqe| {
            // SAFETY: the pool outlives its requests in this test.
            unsafe { ring.submission().push(&sqe.user_data(PROVIDE)).is_ok() }
        });
        ring.submit().unwrap();
    };
    provide(&mut pool, &mut ring);
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.connect(rx.local_addr().unwrap()).unwrap();
    let mut armed = false;
    let mut rearms = 0;
    let mut next = 0u32;
    let total = 600u32;
    let deadline = Instant::now() + Duration::from_secs(20);
    while next < total {
        let batch = (total - next).min(32);
        for s in next..next + batch {
            tx.send(&datagram(s)).unwrap();
        }
        let end = next + batch;
        while next < end {
            assert!(Instant::now() < deadline);
            if !armed {
                common::push(&mut ring, &msg.multishot(&pool, rx.as_raw_fd()).unwrap());
                armed = true;
                rearms += 1;
            }
            for (ud, res, flags) in common::reap(&mut ring, Duration::from_millis(200)) {
                if ud == PROVIDE {
                    assert!(res >= 0, "provide failed: {res}");
                    continue;
                }
                match pool.reap(Cqe::new(res, flags)).unwrap() {
                    Completion::Data { chunks, more } => {
                        let chunk = one(chunks);
                        armed &= more;
                        let d = msg.parse(chunk).unwrap();
                        assert!(!d.is_truncated());
                        assert_eq!(&d.payload()[..], &datagram(next)[..]);
                        assert_eq!(d.source(), Some(tx.local_addr().unwrap()));
                        next += 1;
                    }
                    Completion::NoBuffers => armed = false,
                    other => panic!("{other:?}"),
                }
            }
            pool.publish();
            provide(&mut pool, &mut ring);
        }
    }
    let st = pool.stats();
    (st.buffers_retired, st.utilization(), rearms)
}

#[test]
fn emulated_ring_pool() {
    let r = run(Incremental::Emulated, Backend::Ring, true);
    eprintln!("emulated ring: {r:?}");
}

#[test]
fn emulated_legacy_pool() {
    let r = run(Incremental::Emulated, Backend::Legacy, true);
    eprintln!("emulated legacy: {r:?}");
}

#[test]
fn classic_legacy_pool() {
    let r = run(Incremental::Off, Backend::Legacy, false);
    eprintln!("classic legacy: {r:?}");
}

#[test]
fn emulated_without_min_left_is_refused() {
    let ring = common::uring(8).unwrap();
    let msg = RecvMsg::new(RecvMsg::INET6_NAME_LEN, 0).unwrap();
    let pool = Pool::builder(41)
        .count(2)
        .buf_len(4096)
        .incremental(Incremental::Emulated)
        .build(&ring)
        .unwrap();
    assert!(matches!(
        msg.multishot(&pool, 0),
        Err(Error::InvalidConfig {
            field: "min_left",
            ..
        })
    ));
}
