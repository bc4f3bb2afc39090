//! Property tests: random programs over a real `Pool` whose kernel side is the model (peer
//! writes of random sizes, chunks split, merged and dropped in random order and on other
//! threads, exhaustion and re-arm, pools of 1 to 32768 buffers, ring tails that wrap), with
//! the invariants checked after every step:
//! - every byte is delivered exactly once, in order;
//! - no two live chunks overlap, and no live chunk overlaps a range the model may still write;
//! - a buffer is never posted again while any chunk of it lives;
//! - at quiescence every buffer is back in the ring and the statistics add up.
//!
//! PROPTEST_CASES sets the number of programs (proptest's default, 256, otherwise). Failing
//! programs shrink; keep each one found as a named test at the bottom of this file.

use std::sync::mpsc;
use std::thread;

use bufring::model::{KernelModel, ModelSocket, RecvKind};
use bufring::{Chunk, Completion, Incremental, Pool};
use proptest::prelude::*;

/// Byte `i` of the peer's stream.
fn stream_byte(i: u64) -> u8 {
    (i ^ (i >> 8) ^ (i >> 16)).wrapping_mul(31) as u8
}

#[derive(Debug, Clone)]
struct Config {
    count: usize,
    buf_len: usize,
    incremental: bool,
    min_left: u32,
    start: u16,
}

#[derive(Debug, Clone)]
enum Op {
    /// The peer writes this many bytes.
    Write(usize),
    /// Drop live chunk `i % live`.
    Drop(usize),
    /// Drop it on a new thread (joined).
    DropOnThread(usize),
    /// Hand it to the worker thread, which drops it while the program goes on.
    Hand(usize),
    /// `split_to(at % (len + 1))` of chunk `i`.
    SplitTo(usize, usize),
    /// `split_off(at % (len + 1))` of chunk `i`.
    SplitOff(usize, usize),
    /// `try_merge` chunk `j` into chunk `i`.
    Merge(usize, usize),
    /// `Pool::publish`.
    Publish,
    /// Publish and submit the receive again if it ended.
    Rearm,
}

fn config() -> impl Strategy<Value = Config> {
    let count = prop_oneof![
        3 => 1usize..=8,
        2 => 9usize..=256,
        1 => (8u32..=15).prop_flat_map(|bits| (1usize << (bits - 1))..=(1usize << bits)),
    ];
    (count, any::<bool>(), any::<u16>(), 0u32..4).prop_flat_map(
        |(count, incremental, start, ml)| {
            // Keep the region small (at most 8 MiB): large pools get small buffers.
            let max_len = (8 << 20) / count;
            let buf_len = 1usize..=max_len.clamp(1, 4096);
            (
                Just(count),
                buf_len,
                Just(incremental),
                Just(start),
                Just(ml),
            )
                .prop_map(|(count, buf_len, incremental, start, ml)| Config {
                    count,
                    buf_len,
                    incremental,
                    // min_left: none, 1, a quarter, or the whole buffer.
                    min_left: if incremental {
                        [0, 1, (buf_len as u32 / 4).max(1), buf_len as u32][ml as usize]
                    } else {
                        0
                    },
                    start,
                })
        },
    )
}

fn op(buf_len: usize) -> impl Strategy<Value = Op> {
    let write = 1usize..=(3 * buf_len).min(1 << 16);
    prop_oneof![
        4 => write.prop_map(Op::Write),
        3 => any::<usize>().prop_map(Op::Drop),
        1 => any::<usize>().prop_map(Op::DropOnThread),
        1 => any::<usize>().prop_map(Op::Hand),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(i, a)| Op::SplitTo(i, a)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, a)| Op::SplitOff(i, a)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Op::Merge(i, j)),
        2 => Just(Op::Publish),
        2 => Just(Op::Rearm),
    ]
}

fn program() -> impl Strategy<Value = (Config, Vec<Op>)> {
    config().prop_flat_map(|c| {
        let ops = prop::collection::vec(op(c.buf_len), 0..60);
        (Just(c), ops)
    })
}

/// A live chunk and where its first byte sits in the peer's stream.
struct Live {
    chunk: Chunk,
    pos: u64,
}

struct Harness {
    cfg: Config,
    pool: Pool,
    model: KernelModel,
    sock: ModelSocket,
    live: Vec<Live>,
    written: u64,
    delivered: u64,
    data_cqes: u64,
    enobufs: u64,
    worker: mpsc::Sender<Option<Chunk>>,
    worker_done: mpsc::Receiver<()>,
}

impl Harness {
    fn new(cfg: Config) -> Harness {
        let (pool, ring) = Pool::builder(0)
            .count(cfg.count)
            .buf_len(cfg.buf_len)
            .incremental(if cfg.incremental {
                Incremental::Kernel
            } else {
                Incremental::Off
            })
            .min_left(cfg.min_left)
            .build_detached_at(cfg.start)
            .expect("detached pool");
        let (worker, rx) = mpsc::channel::<Option<Chunk>>();
        let (done_tx, worker_done) = mpsc::channel();
        thread::spawn(move || {
            for msg in rx {
                match msg {
                    Some(chunk) => drop(chunk),
                    None => done_tx.send(()).unwrap(),
                }
            }
        });
        let mut sock = ModelSocket::new();
        sock.arm(RecvKind::Multishot);
        Harness {
            cfg,
            pool,
            model: KernelModel::new(ring),
            sock,
            live: Vec::new(),
            written: 0,
            delivered: 0,
            data_cqes: 0,
            enobufs: 0,
            worker,
            worker_done,
        }
    }

    /// Lets the model run and hands its CQEs to the pool.
    fn run_model(&mut self) {
        let cqes = self.model.run(&mut self.sock).expect("model");
        let mut ended = false;
        for c in &cqes {
            ended = match self.pool.complete(c.res, c.flags) {
                Ok(Completion::Data { chunk, more }) => {
                    assert_eq!(chunk.len() as i32, c.res);
                    for (k, &b) in chunk.iter().enumerate() {
                        assert_eq!(
                            b,
                            stream_byte(self.delivered + k as u64),
                            "byte {} of the stream",
                            self.delivered + k as u64
                        );
                    }
                    self.live.push(Live {
                        chunk,
                        pos: self.delivered,
                    });
                    self.delivered += c.res as u64;
                    self.data_cqes += 1;
                    !more
                }
                Ok(Completion::NoBuffers) => {
                    self.enobufs += 1;
                    true
                }
                Ok(Completion::EndOfStream) => true,
                Ok(Completion::Failed(e)) => panic!("receive failed: {e}"),
                Err(e) => panic!("the pool rejected the model's CQE {c}: {e}"),
            };
        }
        if !cqes.is_empty() {
            assert_eq!(ended, self.sock.armed().is_none(), "request end disagrees");
        }
    }

    fn take(&mut self, i: usize) -> Option<Chunk> {
        if self.live.is_empty() {
            return None;
        }
        let i = i % self.live.len();
        Some(self.live.swap_remove(i).chunk)
    }

    fn sync_worker(&self) {
        self.worker.send(None).unwrap();
        self.worker_done.recv().unwrap();
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write(n) => {
                let bytes: Vec<u8> = (self.written..self.written + n as u64)
                    .map(stream_byte)
                    .collect();
                self.written += n as u64;
                self.sock.write(&bytes);
                self.run_model();
            }
            Op::Drop(i) => drop(self.take(i)),
            Op::DropOnThread(i) => {
                if let Some(c) = self.take(i) {
                    thread::spawn(move || drop(c)).join().unwrap();
                }
            }
            Op::Hand(i) => {
                if let Some(c) = self.take(i) {
                    self.worker.send(Some(c)).unwrap();
                }
            }
            Op::SplitTo(i, at) | Op::SplitOff(i, at) => {
                if self.live.is_empty() {
                    return;
                }
                let i = i % self.live.len();
                let l = &mut self.live[i];
                let at = at % (l.chunk.len() + 1);
                let (chunk, pos) = if matches!(op, Op::SplitTo(..)) {
                    let front = l.chunk.split_to(at);
                    let pos = l.pos;
                    l.pos += at as u64;
                    (front, pos)
                } else {
                    (l.chunk.split_off(at), l.pos + at as u64)
                };
                self.live.push(Live { chunk, pos });
            }
            Op::Merge(i, j) => {
                if self.live.len() < 2 {
                    return;
                }
                let j = j % self.live.len();
                let next = self.live.swap_remove(j);
                let i = i % self.live.len();
                let adjacent = self.live[i].chunk.is_adjacent(&next.chunk);
                let front_len = self.live[i].chunk.len() as u64;
                match self.live[i].chunk.try_merge(next.chunk) {
                    Ok(()) => {
                        assert!(adjacent);
                        assert_eq!(
                            self.live[i].pos + front_len,
                            next.pos,
                            "merged out of order"
                        );
                    }
                    Err(chunk) => {
                        assert!(!adjacent);
                        self.live.push(Live {
                            chunk,
                            pos: next.pos,
                        });
                    }
                }
            }
            Op::Publish => {
                self.pool.publish();
                // New buffers wake nothing by themselves: the kernel tries again on data.
            }
            Op::Rearm => {
                self.pool.publish();
                if self.sock.armed().is_none() {
                    self.sock.arm(RecvKind::Multishot);
                    self.run_model();
                }
            }
        }
    }

    /// The invariants that hold after every step.
    fn check(&self) {
        let s = self.pool.stats();
        let count = self.cfg.count as u32;
        assert_eq!(s.in_kernel + s.with_app, count, "{s:?}");
        assert_eq!(
            u32::from(self.model.available()),
            s.in_kernel,
            "in_kernel vs ring"
        );
        assert_eq!(s.bytes_delivered, self.delivered);
        assert_eq!(s.completions, self.data_cqes);
        assert_eq!(s.enobufs, self.enobufs);
        assert_eq!(self.written - self.delivered, self.sock.queued() as u64);

        // Every live chunk still holds its bytes of the stream (a write by the model into a
        // live chunk would show here).
        for l in &self.live {
            for (k, &b) in l.chunk.iter().enumerate() {
                assert_eq!(
                    b,
                    stream_byte(l.pos + k as u64),
                    "live chunk {:?} changed",
                    l.chunk
                );
            }
        }
        // No two live chunks overlap, and none overlaps an entry the model may still write:
        // all those ranges together are disjoint (one sort, one sweep).
        let mut live_per_bid = vec![0u32; self.cfg.count];
        let mut ranges: Vec<(u64, u64, &str)> = Vec::new();
        for l in self.live.iter().filter(|l| !l.chunk.is_empty()) {
            let p = l.chunk.as_ptr() as u64;
            ranges.push((p, p + l.chunk.len() as u64, "live chunk"));
            live_per_bid[l.chunk.bid() as usize] += 1;
        }
        // The ring: each bid at most once; a freshly posted buffer has no live chunk at all;
        // only the head of an incremental ring is ever partly consumed.
        let posted = self.model.posted();
        let ring = self.model.ring();
        let mut seen = vec![false; self.cfg.count];
        for (i, (_, e)) in posted.iter().enumerate() {
            let bid = e.bid as usize;
            assert!(bid < self.cfg.count, "bid {bid} out of range in the ring");
            assert!(!seen[bid], "bid {bid} posted twice");
            seen[bid] = true;
            let (start, end) = (e.addr, e.addr + u64::from(e.len));
            let base = ring.buf_addr(e.bid);
            assert!(start >= base && end <= base + self.cfg.buf_len as u64);
            let fresh = start == base && e.len as usize == self.cfg.buf_len;
            assert!(
                !fresh || live_per_bid[bid] == 0,
                "bid {bid} posted again while a chunk of it lives"
            );
            if !fresh {
                assert!(self.cfg.incremental && i == 0, "entry {e:?} shrunk");
            }
            ranges.push((start, end, "posted entry"));
        }
        ranges.sort_unstable();
        let mut reach = (0u64, "nothing");
        for &(start, end, what) in &ranges {
            assert!(
                start >= reach.0,
                "{what} at {start:#x}..{end:#x} overlaps a {} ending at {:#x}",
                reach.1,
                reach.0
            );
            reach = (end, what);
        }
    }

    /// Quiescence: drop everything, publish, then drain the stream to its end.
    fn finish(mut self) {
        self.live.clear();
        self.sync_worker();
        self.pool.publish();
        self.check();
        let s = self.pool.stats();
        assert_eq!(s.with_app, 0, "buffers lost: {s:?}");
        assert_eq!(s.in_kernel, self.cfg.count as u32);
        for bid in 0..self.cfg.count as u16 {
            assert_eq!(self.pool.refs(bid), Some(1), "bid {bid}");
        }
        // Every byte written arrives, exactly once, then end of stream.
        self.sock.shutdown();
        let mut rounds = 0;
        loop {
            if self.sock.armed().is_none() {
                self.sock.arm(RecvKind::Multishot);
            }
            self.run_model();
            self.live.clear();
            self.pool.publish();
            if self.sock.armed().is_none()
                && self.sock.queued() == 0
                && self.delivered == self.written
            {
                break;
            }
            rounds += 1;
            assert!(rounds < 1_000_000, "stream does not drain");
        }
        assert_eq!(self.delivered, self.written);
        self.check();
    }
}

fn run_program(cfg: Config, ops: &[Op]) {
    let mut h = Harness::new(cfg);
    h.run_model();
    h.check();
    for op in ops {
        h.apply(op);
        h.check();
    }
    h.finish();
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Programs are cheap; the default number of cases (or PROPTEST_CASES) applies.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn pool_against_model((cfg, ops) in program()) {
        run_program(cfg, &ops);
    }
}

// Named programs: edges worth keeping fixed (and the place for shrunk failures to live).

fn cfg(count: usize, buf_len: usize, incremental: bool, min_left: u32, start: u16) -> Config {
    Config {
        count,
        buf_len,
        incremental,
        min_left,
        start,
    }
}

#[test]
fn one_buffer_across_the_tail_wrap() {
    use Op::*;
    let mut ops = Vec::new();
    for i in 0..12 {
        ops.extend([Write(3 + i % 5), Drop(0), Drop(0), Rearm]);
    }
    run_program(cfg(1, 7, true, 0, 65530), &ops);
    run_program(cfg(1, 7, false, 0, 65530), &ops);
}

#[test]
fn largest_pool_with_a_wrapping_tail() {
    use Op::*;
    let ops = [
        Write(40_000),
        SplitTo(5, 1),
        Hand(3),
        DropOnThread(7),
        Publish,
        Write(30_000),
        Rearm,
        Write(5),
    ];
    run_program(cfg(32768, 1, false, 0, 40_000), &ops);
    run_program(cfg(32768, 2, true, 0, 65535), &ops);
}

#[test]
fn min_left_of_a_whole_buffer_retires_on_every_commit() {
    use Op::*;
    let ops = [
        Write(5),
        Write(17),
        SplitOff(0, 2),
        Merge(0, 1),
        Drop(0),
        Rearm,
        Write(40),
        Rearm,
    ];
    run_program(cfg(3, 16, true, 16, 0), &ops);
}

#[test]
fn pieces_dropped_on_other_threads_while_the_kernel_fills_the_rest() {
    use Op::*;
    let ops = [
        Write(10),
        SplitTo(0, 3),
        Hand(0),
        Write(10),
        SplitOff(1, 4),
        DropOnThread(2),
        Hand(0),
        Publish,
        Write(100),
        Hand(1),
        Hand(0),
        Rearm,
        Write(1),
    ];
    run_program(cfg(2, 64, true, 0, 100), &ops);
    run_program(cfg(2, 64, false, 0, 100), &ops);
}
