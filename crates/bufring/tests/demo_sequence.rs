//! The worked example from the commit that introduced incremental consumption, on the live
//! kernel: two 32 KiB buffers, sends of 4096, 8192, 20480 and 4096 bytes.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bufring::Cqe;
use bufring::{Completion, Incremental, Pool};
#[allow(unused_imports)]
use common::{one, Reap};

fn run(mode: Incremental) -> Vec<(usize, u16, u32, bool)> {
    let mut ring = match common::uring(64) {
        Some(r) => r,
        None => return Vec::new(),
    };
    let mut pool = Pool::builder(1)
        .count(2)
        .buf_len(32 * 1024)
        .incremental(mode)
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
                        assert!(more, "multishot ended early");
                        assert!(chunk.iter().all(|&b| b == size as u8));
                        got += chunk.len();
                        seen.push((chunk.len(), chunk.bid(), chunk.offset(), !chunk.is_last()));
                        // Dropped here: the buffer goes back at the next publish, once the
                        // kernel has retired it.
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            pool.publish();
        }
    }
    seen
}

#[test]
fn incremental_demo_sequence() {
    let seen = run(Incremental::Kernel);
    if seen.is_empty() {
        return;
    }
    assert_eq!(
        seen,
        vec![
            (4096, 0, 0, true),
            (8192, 0, 4096, true),
            (20480, 0, 12288, false),
            (4096, 1, 0, true)
        ]
    );
}

#[test]
fn classic_demo_takes_a_buffer_per_completion() {
    let seen = run(Incremental::Off);
    if seen.is_empty() {
        return;
    }
    assert_eq!(
        seen,
        vec![
            (4096, 0, 0, false),
            (8192, 1, 0, false),
            (20480, 0, 0, false),
            (4096, 1, 0, false)
        ]
    );
}
