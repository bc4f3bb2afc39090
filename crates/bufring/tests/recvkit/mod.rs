//! Helpers for the receive-path tests: drive one or more multishot receives (plain or bundle)
//! through a pool of any mode and backend, re-arming after NoBuffers or an ended multishot,
//! holding chunks for a while so the ring runs dry, and checking every byte.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[allow(unused_imports)]
use crate::common::{one, Reap};
use bufring::Cqe;
use bufring::{Backend, Chunk, Completion, Pool};
use io_uring::{squeue, IoUring};

use crate::common::{self, Checker, Pattern};

/// user_data of PROVIDE_BUFFERS SQEs (legacy pools).
pub const PROVIDE: u64 = u64::MAX;

/// Pushes an SQE with `user_data` and submits.
pub fn push_ud(ring: &mut IoUring, sqe: squeue::Entry, ud: u64) {
    common::push(ring, &sqe.user_data(ud));
}

/// Publishes, and on legacy pools pushes the PROVIDE_BUFFERS SQEs.
pub fn publish(ring: &mut IoUring, pool: &mut Pool) {
    pool.publish();
    if pool.backend() == Backend::Legacy {
        let mut sqes = Vec::new();
        pool.provide(|sqe| {
            sqes.push(sqe.user_data(PROVIDE));
            true
        });
        for s in sqes {
            common::push(ring, &s);
        }
    }
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub completions: u64,
    pub rearms: u64,
    pub enobufs: u64,
    pub multi_buffer_bundles: u64,
    pub partial_chunks: u64,
}

/// One connection under test.
pub struct Conn {
    pub sock: TcpStream,
    pub checker: Checker,
    pub done: bool,
    held: VecDeque<Chunk>,
}

impl Conn {
    pub fn new(sock: TcpStream, seed: u64) -> Self {
        Conn {
            sock,
            checker: Checker::new(seed),
            done: false,
            held: VecDeque::new(),
        }
    }
}

/// Receives every connection's stream to its end through `pool`, with multishot receives
/// (bundle ones if `bundle`). Chunks are checked on arrival and held up to a pseudo-random
/// number below `hold` (0: dropped at once), so the ring runs dry and receives get re-armed.
pub fn receive_all(
    ring: &mut IoUring,
    pool: &mut Pool,
    conns: &mut [Conn],
    bundle: bool,
    hold: usize,
    timeout: Duration,
) -> Seen {
    let deadline = Instant::now() + timeout;
    let mut seen = Seen::default();
    let mut holds = Pattern::new(0x5eed);
    let arm = |ring: &mut IoUring, pool: &Pool, c: &Conn, i: usize| {
        let fd = c.sock.as_raw_fd();
        let sqe = if bundle {
            pool.recv_multishot_bundle(fd)
        } else {
            pool.recv_multishot(fd)
        };
        push_ud(ring, sqe, i as u64);
    };
    publish(ring, pool);
    for (i, c) in conns.iter().enumerate() {
        arm(ring, pool, c, i);
    }
    while conns.iter().any(|c| !c.done) {
        assert!(
            Instant::now() < deadline,
            "streams not finished in {timeout:?}"
        );
        let mut rearm = Vec::new();
        for (ud, res, flags) in common::reap(ring, Duration::from_millis(200)) {
            if ud == PROVIDE {
                assert!(res >= 0, "PROVIDE_BUFFERS failed: {res}");
                continue;
            }
            let i = ud as usize;
            let c = &mut conns[i];
            let comp = pool
                .reap(Cqe::new(res, flags))
                .expect("kernel completion rejected");
            seen.completions += 1;
            if comp.must_rearm() {
                rearm.push(i);
                seen.rearms += 1;
            }
            match comp {
                Completion::Data { chunks, .. } => {
                    if chunks.buffers() > 1 {
                        seen.multi_buffer_bundles += 1;
                    }
                    for chunk in chunks {
                        c.checker.check(&chunk);
                        if !chunk.is_last() {
                            seen.partial_chunks += 1;
                        }
                        c.held.push_back(chunk);
                    }
                }
                Completion::EndOfStream => c.done = true,
                Completion::NoBuffers => {
                    seen.enobufs += 1;
                    // Everything held goes back: the ring must refill.
                    for c in conns.iter_mut() {
                        c.held.clear();
                    }
                }
                Completion::Failed(e) => panic!("receive failed: {e}"),
            }
        }
        for c in conns.iter_mut() {
            let keep = if hold == 0 {
                0
            } else {
                holds.next_u64() as usize % hold
            };
            while c.held.len() > keep {
                c.held.pop_front();
            }
        }
        publish(ring, pool);
        for i in rearm {
            if !conns[i].done {
                arm(ring, pool, &conns[i], i);
            }
        }
    }
    for c in conns.iter_mut() {
        c.held.clear();
    }
    publish(ring, pool);
    seen
}

/// Like `common::send_pattern`, with a pause after each write so the receiver keeps up and
/// each completion holds about one write (buffers then serve several completions).
pub fn send_pattern_paced(
    mut s: TcpStream,
    total: usize,
    max_write: usize,
    seed: u64,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut data = Pattern::new(seed);
    let mut sizes = Pattern::new(seed ^ 0x9e37_79b9);
    let mut buf = vec![0u8; max_write];
    let mut sent = 0;
    while sent < total {
        let n = (1 + sizes.next_u64() as usize % max_write).min(total - sent);
        data.fill(&mut buf[..n]);
        s.write_all(&buf[..n])?;
        sent += n;
        std::thread::sleep(Duration::from_micros(50));
    }
    s.shutdown(std::net::Shutdown::Write)
}

/// Receives one TCP stream of `total` bytes (random writes up to `max_write`) and checks it.
pub fn one_stream(
    ring: &mut IoUring,
    pool: &mut Pool,
    total: usize,
    max_write: usize,
    bundle: bool,
    hold: usize,
) -> Seen {
    stream_with(ring, pool, total, max_write, bundle, hold, false)
}

/// [`one_stream`] with the paced sender.
pub fn one_paced_stream(
    ring: &mut IoUring,
    pool: &mut Pool,
    total: usize,
    max_write: usize,
    hold: usize,
) -> Seen {
    stream_with(ring, pool, total, max_write, false, hold, true)
}

fn stream_with(
    ring: &mut IoUring,
    pool: &mut Pool,
    total: usize,
    max_write: usize,
    bundle: bool,
    hold: usize,
    paced: bool,
) -> Seen {
    let (rx, tx) = common::tcp_pair();
    let seed = 0xabcdef ^ total as u64;
    let sender = std::thread::spawn(move || {
        if paced {
            send_pattern_paced(tx, total, max_write, seed)
        } else {
            common::send_pattern(tx, total, max_write, seed)
        }
    });
    let mut conns = [Conn::new(rx, seed)];
    let seen = receive_all(
        ring,
        pool,
        &mut conns,
        bundle,
        hold,
        Duration::from_secs(60),
    );
    sender.join().unwrap().unwrap();
    assert_eq!(conns[0].checker.received, total);
    seen
}
