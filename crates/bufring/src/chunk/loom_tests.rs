//! The chunk return path under loom: per-buffer reference counts and the lock-free stack of
//! returned bids (`Shared::release` / `Shared::drain_returns`), with chunks dropped on other
//! threads while the owner drains. Loom runs every interleaving (and every weak-memory
//! outcome it models) of each scenario. Run with:
//! `RUSTFLAGS="--cfg loom" cargo test -p bufring --lib --release loom`.

use std::sync::Arc;

use loom::cell::UnsafeCell;
use loom::thread;

use super::{Chunk, Shared};
use crate::mem::{HugePages, Mmap};

fn shared(count: u32) -> Arc<Shared> {
    let region = Mmap::anonymous(count as usize * 8, HugePages::Off).unwrap();
    Arc::new(Shared::new(region, 8, count))
}

/// Chunk of `[off, off+len)` of `bid` after the kernel retired it: the chunk takes over the
/// kernel's reference.
fn retired(shared: &Arc<Shared>, bid: u16, off: u32, len: u32) -> Chunk {
    shared.hold(bid);
    // SAFETY: the range lies in buffer `bid`, which nothing writes; the kernel's reference
    // just taken goes to the chunk.
    unsafe { Chunk::new(Shared::ptr(shared), bid, off, len, true) }
}

/// Two pieces of one buffer dropped on two threads while the owner drains: the buffer comes
/// back exactly once, and only after both pieces are gone.
#[test]
fn loom_last_piece_returns_the_buffer_once() {
    loom::model(|| {
        let s = shared(1);
        let mut a = retired(&s, 0, 0, 8);
        let b = a.split_to(4);
        let t1 = thread::spawn(move || drop(a));
        let t2 = thread::spawn(move || drop(b));
        let mut seen = Vec::new();
        s.drain_returns(|bid| seen.push(bid));
        if !seen.is_empty() {
            // Returned: no piece may be alive, so both threads are past their release.
            assert_eq!(s.refs(0), 0);
        }
        t1.join().unwrap();
        t2.join().unwrap();
        s.drain_returns(|bid| seen.push(bid));
        assert_eq!(seen, vec![0]);
    });
}

/// Different buffers released at the same time all reach the stack, none twice, none lost,
/// while the owner takes the stack concurrently.
#[test]
fn loom_concurrent_returns_are_not_lost() {
    loom::model(|| {
        let s = shared(3);
        let c0 = retired(&s, 0, 0, 8);
        let c1 = retired(&s, 1, 0, 8);
        let c2 = retired(&s, 2, 0, 8);
        let t1 = thread::spawn(move || drop(c0));
        let t2 = thread::spawn(move || drop(c1));
        let mut seen = Vec::new();
        s.drain_returns(|bid| seen.push(bid));
        drop(c2);
        t1.join().unwrap();
        t2.join().unwrap();
        s.drain_returns(|bid| seen.push(bid));
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2]);
    });
}

/// What the holders of a buffer did with its bytes happens before the owner sees the buffer
/// come back (and hands it to the kernel, which writes into it). The buffer's bytes are
/// stood in for by loom cells, so loom reports a data race if the orderings of release,
/// fence and stack were too weak.
#[test]
fn loom_return_happens_after_every_use() {
    loom::model(|| {
        let s = shared(1);
        let mut a = retired(&s, 0, 0, 8);
        let b = a.split_to(4);
        let bytes_a = Arc::new(UnsafeCell::new(0u8));
        let bytes_b = Arc::new(UnsafeCell::new(0u8));
        let (ua, ub) = (Arc::clone(&bytes_a), Arc::clone(&bytes_b));
        let t1 = thread::spawn(move || {
            // SAFETY: loom cell; loom checks the access.
            ua.with_mut(|p| unsafe { *p = 1 });
            drop(a);
        });
        let t2 = thread::spawn(move || {
            // SAFETY: loom cell; loom checks the access.
            ub.with_mut(|p| unsafe { *p = 2 });
            drop(b);
        });
        let mut back = false;
        s.drain_returns(|_| back = true);
        if back {
            // The kernel refills the buffer: this must not race with the holders' use.
            // SAFETY: loom cells; loom checks the accesses.
            bytes_a.with_mut(|p| unsafe { *p = 9 });
            bytes_b.with_mut(|p| unsafe { *p = 9 });
        }
        t1.join().unwrap();
        t2.join().unwrap();
    });
}

/// `shared(count)` with one strong count per buffer, as a pool holds them.
fn pool_shared(count: u32) -> Arc<Shared> {
    let s = shared(count);
    for _ in 0..count {
        std::mem::forget(Arc::clone(&s));
    }
    s
}

/// The pool goes away while chunks are dropped on other threads: every buffer's strong count
/// is dropped exactly once, by the pool (taken off the stack at close) or by the releaser that
/// finds the stack closed, never both, never neither.
#[test]
fn loom_close_races_releases() {
    loom::model(|| {
        let s = pool_shared(2);
        let c0 = retired(&s, 0, 0, 8);
        let c1 = retired(&s, 1, 0, 8);
        let t1 = thread::spawn(move || drop(c0));
        let ptr = Arc::as_ptr(&s);
        // SAFETY: the counts of bids on the stack are the closer's; `s` keeps the Arc alive.
        s.close(|_| unsafe { Arc::decrement_strong_count(ptr) });
        drop(c1);
        t1.join().unwrap();
        assert_eq!(Arc::strong_count(&s), 1);
    });
}

/// A buffer the kernel still holds, with a chunk out (incremental consumption), when the pool
/// goes: the pool drops the kernel's reference while the chunk is dropped on another thread;
/// whichever is last drops the buffer's count, once.
#[test]
fn loom_close_with_kernel_reference() {
    loom::model(|| {
        let s = pool_shared(1);
        s.hold(0);
        s.acquire(0);
        // SAFETY: as in `retired`, with a reference of the chunk's own.
        let c = unsafe { Chunk::new(Shared::ptr(&s), 0, 0, 4, false) };
        let t1 = thread::spawn(move || drop(c));
        let ptr = Arc::as_ptr(&s);
        // SAFETY: as in `Pool::drop`: stack counts are ours, the kernel's reference is ours to
        // give up, and `s` keeps the Arc alive.
        s.close(|_| unsafe { Arc::decrement_strong_count(ptr) });
        // SAFETY: `ptr` is the Arc's pointer, the kernel's reference is ours to give up, and
        // `s` keeps the Arc alive.
        unsafe { Shared::release(ptr, 0) };
        t1.join().unwrap();
        assert_eq!(Arc::strong_count(&s), 1);
    });
}

/// Chunk `[off, off+len)` of `bid` while the kernel keeps the biased buffer: the owner counts
/// it, the shared count does not change.
fn handed(shared: &Arc<Shared>, bid: u16, off: u32, len: u32) -> Chunk {
    // SAFETY: the range lies in buffer `bid`, which nothing writes; the bias stands for the
    // chunk's reference until the owner settles it.
    unsafe { Chunk::new(Shared::ptr(shared), bid, off, len, false) }
}

/// An incremental buffer: two chunks handed out while the kernel kept it (counted by the
/// owner, not in the shared count) are dropped on two threads while the owner retires the
/// buffer without a chunk of its own: the buffer comes back exactly once, after both are gone.
#[test]
fn loom_unbias_races_releases() {
    loom::model(|| {
        let s = shared(1);
        s.hold_biased(0);
        let a = handed(&s, 0, 0, 4);
        let b = handed(&s, 0, 4, 4);
        let t1 = thread::spawn(move || drop(a));
        let t2 = thread::spawn(move || drop(b));
        // SAFETY: `s` is the `Arc`'s pointer and keeps it alive; the bias is ours.
        unsafe { Shared::unbias(Arc::as_ptr(&s), 0, 2, 0) };
        let mut seen = Vec::new();
        s.drain_returns(|bid| seen.push(bid));
        if !seen.is_empty() {
            assert_eq!(s.refs(0), 0, "returned while a piece was alive");
        }
        t1.join().unwrap();
        t2.join().unwrap();
        s.drain_returns(|bid| seen.push(bid));
        assert_eq!(seen, vec![0]);
    });
}

/// The retiring chunk inherits the kernel's reference while an earlier piece is dropped on
/// another thread: the buffer comes back once, with the later of the two drops.
#[test]
fn loom_unbias_with_an_inheriting_chunk() {
    loom::model(|| {
        let s = shared(1);
        s.hold_biased(0);
        let a = handed(&s, 0, 0, 4);
        let t1 = thread::spawn(move || drop(a));
        // SAFETY: as above; the new chunk takes the kernel's reference (`keep` 1).
        unsafe { Shared::unbias(Arc::as_ptr(&s), 0, 1, 1) };
        // SAFETY: the rest of the buffer, with the reference just kept for it.
        let last = unsafe { Chunk::new(Shared::ptr(&s), 0, 4, 4, true) };
        let t2 = thread::spawn(move || drop(last));
        t1.join().unwrap();
        t2.join().unwrap();
        let mut seen = Vec::new();
        s.drain_returns(|bid| seen.push(bid));
        assert_eq!(seen, vec![0]);
        assert_eq!(s.refs(0), 0);
    });
}

/// The owner asks for a wake-up (the driver about to sleep while receives wait for buffers)
/// while a chunk is dropped on another thread: either the owner sees the return at once, or the
/// release wakes it; never neither (a lost wake-up leaves the driver asleep with a buffer
/// back), and never a wake-up nobody asked for.
#[test]
fn loom_a_wanted_wake_is_never_lost() {
    loom::model(|| {
        let s = shared(1);
        let c = retired(&s, 0, 0, 8);
        let t = thread::spawn(move || drop(c));
        let armed = s.want_wake();
        t.join().unwrap();
        if armed {
            assert_eq!(
                s.wakes(),
                1,
                "the release found the owner waiting and must wake it"
            );
        } else {
            assert_eq!(s.wakes(), 0);
            assert!(
                s.has_returns(),
                "not armed only because the buffer was back already"
            );
        }
        let mut seen = Vec::new();
        s.drain_returns(|bid| seen.push(bid));
        assert_eq!(seen, vec![0]);
    });
}

/// Two releases race after the owner asked for a wake-up: one wake-up, both buffers back.
#[test]
fn loom_one_wake_for_many_returns() {
    loom::model(|| {
        let s = shared(2);
        let c0 = retired(&s, 0, 0, 8);
        let c1 = retired(&s, 1, 0, 8);
        assert!(s.want_wake());
        let t = thread::spawn(move || drop(c0));
        drop(c1);
        t.join().unwrap();
        assert_eq!(s.wakes(), 1);
        let mut seen = Vec::new();
        s.drain_returns(|bid| seen.push(bid));
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1]);
    });
}
