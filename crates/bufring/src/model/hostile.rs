//! Hostile completions: an arbitrary byte string becomes a program of CQEs (any result, any
//! flags, any bid) and chunk operations against a detached pool. Every CQE must be accepted
//! exactly when the pool's stated rules allow it (else rejected with a typed error and nothing
//! changed), no chunk may leave its buffer or overlap another, and at the end every buffer must
//! be back in the ring. Shared by the fuzz target (`fuzz/`) and the corpus replay test.

use crate::completion::{Completion, Cqe};
use crate::error::{BadCompletion, Error};
use crate::model::ModelRing;
use crate::pool::{Incremental, Pool};
use crate::{Chunk, PoolStats};

/// Reads the input a little at a time; runs out as zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the harness expects of each buffer, kept independently of the pool.
#[derive(Clone, Copy, Debug, Default)]
struct Expect {
    /// The kernel holds it (posted and not retired).
    held: bool,
    /// Next byte the kernel writes (incremental).
    cursor: u32,
    /// Retired and waiting for its last chunk / the next publish.
    retired: bool,
    /// Ring position of its entry while held.
    pos: u16,
}

/// Runs one hostile program. Panics (with a message naming the broken rule) if the pool
/// misbehaves; returns normally otherwise, whatever the input.
pub fn run(data: &[u8]) {
    let mut input = Input(data);
    // The first bytes choose the pool: 1 to 16 buffers of 1 to 4096 bytes, classic or
    // incremental.
    let count = 1 + (input.u8() % 16) as usize;
    let buf_len = 1 + (input.u16() % 4096) as u32;
    let incremental = input.u8() & 1 == 1;
    let (mut pool, ring) = Pool::builder(0)
        .count(count)
        .buf_len(buf_len as usize)
        .incremental(if incremental {
            Incremental::Kernel
        } else {
            Incremental::Off
        })
        .build_detached()
        .expect("a valid detached pool");
    // The pool posts every buffer at build, in bid order, from ring position 0.
    let mut expect: Vec<Expect> = (0..count)
        .map(|bid| Expect {
            held: true,
            pos: bid as u16,
            ..Expect::default()
        })
        .collect();
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut steps = 0;
    while !input.is_empty() && steps < 4096 {
        steps += 1;
        match input.u8() % 8 {
            // Mostly completions: a bid near the pool's range, a result near the buffer size,
            // and sometimes anything at all.
            0..=3 => {
                let mode = input.u8();
                let mut flags = input.u32() & 0xffff;
                let bid = if mode & 1 == 0 {
                    input.u16() % (count as u16 + 2)
                } else {
                    input.u16()
                };
                flags |= u32::from(bid) << 16;
                let res = match mode >> 1 & 3 {
                    0 => (input.u16() % (buf_len as u16).saturating_add(2)) as i32,
                    1 => -((input.u8() % 128) as i32),
                    _ => input.u32() as i32,
                };
                let tail = ring.tail();
                complete(
                    &mut pool,
                    &mut expect,
                    &mut chunks,
                    res,
                    flags,
                    buf_len,
                    tail,
                );
            }
            4 => {
                if !chunks.is_empty() {
                    let i = input.u16() as usize % chunks.len();
                    let c = chunks.swap_remove(i);
                    if input.u8() & 1 == 1 {
                        std::thread::spawn(move || drop(c)).join().unwrap();
                    } else {
                        drop(c);
                    }
                }
            }
            5 => {
                if !chunks.is_empty() {
                    let i = input.u16() as usize % chunks.len();
                    let at = input.u16() as usize % (chunks[i].len() + 1);
                    let front = if input.u8() & 1 == 1 {
                        chunks[i].split_off(at)
                    } else {
                        chunks[i].split_to(at)
                    };
                    chunks.push(front);
                }
            }
            6 => {
                if chunks.len() >= 2 {
                    let i = input.u16() as usize % chunks.len();
                    let next = chunks.swap_remove(i);
                    let j = input.u16() as usize % chunks.len();
                    let adjacent = chunks[j].is_adjacent(&next);
                    match chunks[j].try_merge(next) {
                        Ok(()) => assert!(adjacent, "merged chunks that are not adjacent"),
                        Err(next) => {
                            assert!(!adjacent, "refused to merge adjacent chunks");
                            chunks.push(next);
                        }
                    }
                }
            }
            _ => publish(&mut pool, &ring, &mut expect, &chunks),
        }
        check(&pool, &expect, &chunks, buf_len);
    }
    // Quiescence: every chunk gone, one publish, and every buffer is the kernel's again.
    drop(chunks);
    publish(&mut pool, &ring, &mut expect, &[]);
    let s = pool.stats();
    assert_eq!(s.in_kernel, count as u32, "buffers lost: {s:?}");
    assert_eq!(s.with_app, 0, "buffers lost: {s:?}");
    for bid in 0..count as u16 {
        assert_eq!(pool.refs(bid), Some(1), "bid {bid} not back in the ring");
        assert!(expect[bid as usize].held);
    }
}

/// Feeds one CQE and checks the verdict against the rules, restated here independently.
fn complete(
    pool: &mut Pool,
    expect: &mut [Expect],
    chunks: &mut Vec<Chunk>,
    res: i32,
    flags: u32,
    buf_len: u32,
    tail: u16,
) {
    let before = pool.stats();
    let f = Cqe::new(res, flags);
    // SAFETY: a detached pool: no kernel writes into its buffers, so no CQE, however made up,
    // can put a write under a chunk (what `complete`'s contract guards against). The harness
    // checks that the validation alone keeps every slice in bounds.
    let verdict = unsafe { pool.complete(f) };
    let Some(bid) = f.bid() else {
        match (&verdict, res) {
            (Ok(Completion::EndOfStream), 0) => {}
            (Ok(Completion::NoBuffers), r) if r == -libc::ENOBUFS => {}
            (Ok(Completion::Failed(_)), r) if r < 0 => {}
            (Err(Error::BadCompletion(BadCompletion::DataWithoutBuffer { .. })), r) if r > 0 => {}
            _ => panic!("res {res} without a buffer gave {verdict:?}"),
        }
        if verdict.is_err() {
            assert_unchanged(before, pool.stats());
        }
        return;
    };
    let i = bid as usize;
    let should_reject = if i >= expect.len() {
        Some("bid out of range")
    } else if !expect[i].held {
        Some("bid not held by the kernel")
    } else if tail.wrapping_sub(expect[i].pos) as usize > expect.len() {
        // A kernel takes entries in ring order: one posted `count` or more entries before the
        // tail would have been consumed before the newer posts of other buffers.
        Some("entry older than the ring can hold")
    } else if f.buf_more() && !pool.is_incremental() {
        Some("F_BUF_MORE on a classic pool")
    } else if res > 0 && res as u32 > buf_len - expect[i].cursor {
        Some("more bytes than the buffer has left")
    } else if f.buf_more() && res > 0 && res as u32 == buf_len - expect[i].cursor {
        Some("F_BUF_MORE although the completion used up the buffer")
    } else {
        None
    };
    match (should_reject, verdict) {
        (Some(_), Err(Error::BadCompletion(_))) => assert_unchanged(before, pool.stats()),
        (Some(why), Ok(c)) => panic!("accepted a CQE ({why}): res {res} flags {flags:#x}: {c:?}"),
        (None, Err(e)) => panic!("rejected a valid CQE res {res} flags {flags:#x}: {e}"),
        (Some(_), Err(e)) => panic!("wrong error kind: {e}"),
        (None, Ok(c)) => {
            let e = &mut expect[i];
            let offset = e.cursor;
            let retired = !f.buf_more();
            if retired {
                e.held = false;
                e.retired = true;
                e.cursor = 0;
            } else {
                e.cursor += res.max(0) as u32;
            }
            match c {
                Completion::Data { chunks: got, .. } => {
                    let chunk = got.into_single().expect("one buffer per completion");
                    assert!(res > 0, "data for res {res}");
                    assert_eq!(chunk.len(), res as usize);
                    assert_eq!((chunk.bid(), chunk.offset()), (bid, offset));
                    assert_eq!(chunk.is_last(), retired);
                    assert!(chunk.offset() as usize + chunk.len() <= buf_len as usize);
                    // Touch every byte: an out-of-bounds slice shows up here (and under
                    // valgrind).
                    let sum: u32 = chunk.iter().map(|&b| u32::from(b)).sum();
                    std::hint::black_box(sum);
                    chunks.push(chunk);
                }
                Completion::EndOfStream => assert_eq!(res, 0),
                Completion::Failed(_) => assert!(res < 0),
                Completion::NoBuffers => panic!("NoBuffers with a buffer"),
            }
        }
    }
}

fn assert_unchanged(before: PoolStats, after: PoolStats) {
    assert_eq!(
        PoolStats {
            rejected: before.rejected + 1,
            ..before
        },
        after,
        "a rejected CQE changed the pool"
    );
}

/// Publishes and checks that exactly the retired buffers without chunks went back, each
/// once, with its full length (read from the ring, as the kernel would).
fn publish(pool: &mut Pool, ring: &ModelRing, expect: &mut [Expect], chunks: &[Chunk]) {
    let mut due = vec![false; expect.len()];
    for (bid, e) in expect.iter().enumerate() {
        due[bid] = e.retired && !chunks.iter().any(|c| c.bid() as usize == bid);
    }
    let before = ring.tail();
    let n = pool.publish();
    let after = ring.tail();
    assert_eq!(
        after.wrapping_sub(before) as u32,
        n,
        "tail moved by other than {n}"
    );
    for k in 0..n as u16 {
        let pos = before.wrapping_add(k);
        let entry = ring.entry(pos);
        let bid = entry.bid as usize;
        assert!(due.get(bid) == Some(&true), "bid {bid} posted but not due");
        due[bid] = false;
        assert_eq!(
            entry.addr,
            ring.buf_addr(entry.bid),
            "bid {bid} posted at an offset"
        );
        assert_eq!(entry.len, ring.buf_len(), "bid {bid} posted short");
        let e = &mut expect[bid];
        e.retired = false;
        e.held = true;
        e.pos = pos;
    }
    assert!(!due.contains(&true), "a due buffer was not posted");
}

/// No two live chunks overlap; chunks stay inside their buffer and off the part the kernel
/// may still write; the counters add up.
fn check(pool: &Pool, expect: &[Expect], chunks: &[Chunk], buf_len: u32) {
    // Empty chunks hold no bytes and overlap nothing.
    let mut ranges: Vec<(u16, u32, u32)> = chunks
        .iter()
        .filter(|c| !c.is_empty())
        .map(|c| (c.bid(), c.offset(), c.offset() + c.len() as u32))
        .collect();
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        assert!(
            w[0].0 != w[1].0 || w[0].2 <= w[1].1,
            "chunks overlap: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
    for &(bid, start, end) in &ranges {
        assert!(end <= buf_len);
        let e = expect[bid as usize];
        if e.held {
            assert!(
                end <= e.cursor,
                "chunk {bid}:{start}..{end} in space the kernel may write"
            );
        }
    }
    let s = pool.stats();
    assert_eq!(s.in_kernel + s.with_app, s.buffers);
    let held = expect.iter().filter(|e| e.held).count() as u32;
    assert_eq!(s.in_kernel, held, "in_kernel disagrees with the CQEs seen");
}
