//! Data integrity on the real kernel: checksummed streams over TCP loopback with random write
//! sizes, through one multishot recv, long enough to wrap the ring tail past 65536.

mod common;

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::Duration;

use bufring::Cqe;
use bufring::{Chunk, Completion, Incremental, Pool};
#[allow(unused_imports)]
use common::{one, Reap};
use common::{Checker, Pattern};

fn stream_through(
    mode: Incremental,
    count: usize,
    buf_len: usize,
    total: usize,
    kernel_allocated: bool,
) -> Pool {
    let mut ring = common::uring(256).expect("checked by caller");
    let mut pool = Pool::builder(7)
        .count(count)
        .buf_len(buf_len)
        .incremental(mode)
        .kernel_allocated(kernel_allocated)
        .build(&ring)
        .unwrap();
    let (rx, tx) = common::tcp_pair();
    let sender = std::thread::spawn(move || common::send_pattern(tx, total, 9000, 42));
    let mut check = Checker::new(42);
    common::receive_stream(
        &mut ring,
        &mut pool,
        &rx,
        Duration::from_secs(120),
        |_, chunk| {
            check.check(&chunk);
        },
    );
    sender.join().unwrap().unwrap();
    assert_eq!(check.received, total);
    pool.publish();
    pool
}

#[test]
fn incremental_stream_wraps_the_tail() {
    if common::uring(4).is_none() {
        return;
    }
    // 256-byte buffers: every retirement re-posts one, so 24 MiB means ~98k posts, well past the
    // 16-bit tail's wrap at 65536.
    let total = 24 << 20;
    let pool = stream_through(Incremental::Kernel, 64, 256, total, false);
    let s = pool.stats();
    assert!(s.reposted + 64 > 65536, "only {} posts", s.reposted + 64);
    assert_eq!(s.bytes_delivered, total as u64);
    assert_eq!(s.in_kernel, 64, "every buffer is back in the ring: {s:?}");
    assert_eq!(s.with_app, 0);
}

#[test]
fn classic_stream_wraps_the_tail() {
    if common::uring(4).is_none() {
        return;
    }
    let total = 20 << 20;
    let pool = stream_through(Incremental::Off, 32, 256, total, false);
    let s = pool.stats();
    assert!(s.reposted + 32 > 65536, "only {} posts", s.reposted + 32);
    assert_eq!(s.in_kernel, 32);
    // Classic rings retire a buffer per completion.
    assert_eq!(s.buffers_retired, s.completions);
}

#[test]
fn large_buffers_tens_of_megabytes() {
    if common::uring(4).is_none() {
        return;
    }
    let total = 48 << 20;
    let pool = stream_through(Incremental::Kernel, 8, 1 << 20, total, false);
    let s = pool.stats();
    assert_eq!(s.bytes_delivered, total as u64);
    assert!(
        s.utilization() > 0.99,
        "full buffers expected: {}",
        s.utilization()
    );
}

#[test]
fn kernel_allocated_ring_carries_data() {
    if common::uring(4).is_none() {
        return;
    }
    let pool = stream_through(Incremental::Kernel, 16, 4096, 4 << 20, true);
    assert!(pool.ring().unwrap().is_kernel_allocated());
    assert_eq!(pool.stats().in_kernel, 16);
}

/// Receives a stream, holding chunks and dropping them in a scrambled order, half of them on
/// another thread.
fn scrambled_drops(mode: Incremental) {
    let mut ring = require_uring_or_return!();
    let mut pool = Pool::builder(3)
        .count(32)
        .buf_len(4096)
        .incremental(mode)
        .build(&ring)
        .unwrap();
    let (rx, tx) = common::tcp_pair();
    let total = 8 << 20;
    let sender = std::thread::spawn(move || common::send_pattern(tx, total, 3000, 7));
    let (to_dropper, dropper_rx) = mpsc::channel::<Chunk>();
    let dropper = std::thread::spawn(move || {
        let mut n = 0u64;
        for chunk in dropper_rx {
            n += chunk.len() as u64;
            drop(chunk);
        }
        n
    });
    let mut check = Checker::new(7);
    let mut held: Vec<Chunk> = Vec::new();
    let mut rng = Pattern::new(99);
    let mut dropped_elsewhere = 0u64;
    common::receive_stream(
        &mut ring,
        &mut pool,
        &rx,
        Duration::from_secs(60),
        |_, mut chunk| {
            check.check(&chunk);
            // Split some chunks so one buffer has several live pieces.
            if chunk.len() > 10 && rng.next_u64() % 3 == 0 {
                let at = 1 + rng.next_u64() as usize % (chunk.len() - 1);
                held.push(chunk.split_to(at));
            }
            held.push(chunk);
            if held.len() >= 12 {
                // Drop a random half, some here, some on the other thread.
                for _ in 0..6 {
                    let i = rng.next_u64() as usize % held.len();
                    let c = held.swap_remove(i);
                    if rng.next_u64() % 2 == 0 {
                        dropped_elsewhere += c.len() as u64;
                        to_dropper.send(c).unwrap();
                    } else {
                        drop(c);
                    }
                }
            }
        },
    );
    sender.join().unwrap().unwrap();
    drop(held);
    drop(to_dropper);
    assert_eq!(dropper.join().unwrap(), dropped_elsewhere);
    assert!(dropped_elsewhere > 0);
    assert_eq!(check.received, total);
    pool.publish();
    let s = pool.stats();
    assert_eq!(s.in_kernel, 32, "{s:?}");
    assert_eq!(s.with_app, 0);
    for bid in 0..32 {
        assert_eq!(
            pool.refs(bid),
            Some(1),
            "bid {bid}: only the kernel's reference is left"
        );
    }
}

macro_rules! require_uring_or_return {
    () => {
        match common::uring(256) {
            Some(r) => r,
            None => return,
        }
    };
}
use require_uring_or_return;

#[test]
fn chunks_dropped_out_of_order_and_on_other_threads_incremental() {
    scrambled_drops(Incremental::Kernel);
}

#[test]
fn chunks_dropped_out_of_order_and_on_other_threads_classic() {
    scrambled_drops(Incremental::Off);
}

/// Two connections share one incremental pool: their receives interleave in the same buffers,
/// and each stream must still come out intact.
#[test]
fn two_connections_share_an_incremental_pool() {
    let mut ring = require_uring_or_return!();
    let mut pool = Pool::builder(4)
        .count(16)
        .buf_len(16 * 1024)
        .incremental(Incremental::Kernel)
        .build(&ring)
        .unwrap();
    let total = 4 << 20;
    let (rx_a, tx_a) = common::tcp_pair();
    let (rx_b, tx_b) = common::tcp_pair();
    let sa = std::thread::spawn(move || common::send_pattern(tx_a, total, 5000, 1));
    let sb = std::thread::spawn(move || common::send_pattern(tx_b, total, 7000, 2));
    let socks = [&rx_a, &rx_b];
    let arm = |ring: &mut io_uring::IoUring, pool: &Pool, i: usize| {
        common::push(
            ring,
            &pool
                .recv_multishot(socks[i].as_raw_fd())
                .user_data(i as u64),
        );
    };
    arm(&mut ring, &pool, 0);
    arm(&mut ring, &pool, 1);
    let mut checks = [Checker::new(1), Checker::new(2)];
    let mut done = [false, false];
    let mut shared_buffer_seen = false;
    let mut last_bid = [None, None];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(done[0] && done[1]) {
        assert!(std::time::Instant::now() < deadline, "timed out");
        for (ud, res, flags) in common::reap(&mut ring, Duration::from_millis(200)) {
            let i = ud as usize;
            match pool.reap(Cqe::new(res, flags)).unwrap() {
                Completion::Data { chunks, more } => {
                    let chunk = one(chunks);
                    checks[i].check(&chunk);
                    if last_bid[1 - i] == Some(chunk.bid()) && chunk.offset() > 0 {
                        shared_buffer_seen = true;
                    }
                    last_bid[i] = Some(chunk.bid());
                    if !more {
                        pool.publish();
                        arm(&mut ring, &pool, i);
                    }
                }
                Completion::NoBuffers => {
                    pool.publish();
                    arm(&mut ring, &pool, i);
                }
                Completion::EndOfStream => done[i] = true,
                Completion::Failed(e) => panic!("{e}"),
            }
        }
        pool.publish();
    }
    sa.join().unwrap().unwrap();
    sb.join().unwrap().unwrap();
    assert_eq!(checks[0].received, total);
    assert_eq!(checks[1].received, total);
    // Not guaranteed by the kernel's timing, so only reported.
    eprintln!("connections shared a buffer: {shared_buffer_seen}");
}
