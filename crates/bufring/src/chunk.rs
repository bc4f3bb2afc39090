//! The handle a user holds: a piece of one pool buffer that the kernel has filled. It derefs
//! to the bytes, can be split and advanced without copying, can be sent to and dropped on
//! any thread, and gives its buffer back when the last piece of it is gone.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

// The return path runs on loom's atomics under `--cfg loom`, so loom can check every
// interleaving of it (src/chunk/loom_tests.rs; see CONTRIBUTING.md).
#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicU32, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicU32, Ordering};

use crate::mem::Mmap;

const NIL: u32 = u32::MAX;

/// What chunks share with their pool: the buffer memory, a reference count per buffer and the
/// lock-free stack on which released buffers travel back to the pool's owner.
pub(crate) struct Shared {
    region: Mmap,
    pub(crate) buf_len: u32,
    /// Per bid: live chunks, plus one while the kernel holds the buffer.
    refs: Box<[AtomicU32]>,
    /// Top of the stack of released bids (NIL when empty). Any thread pushes; only the owner
    /// takes, and it takes everything at once, so there is no ABA problem.
    returns: AtomicU32,
    next: Box<[AtomicU32]>,
}

impl Shared {
    pub(crate) fn new(region: Mmap, buf_len: u32, count: u32) -> Self {
        Shared {
            region,
            buf_len,
            refs: (0..count).map(|_| AtomicU32::new(0)).collect(),
            returns: AtomicU32::new(NIL),
            next: (0..count).map(|_| AtomicU32::new(NIL)).collect(),
        }
    }

    /// The address of buffer `bid`'s first byte.
    #[inline]
    pub(crate) fn buf_addr(&self, bid: u16) -> *mut u8 {
        // SAFETY: the pool only passes bids below `count`, so the offset is inside the region.
        unsafe {
            self.region
                .as_ptr()
                .add(bid as usize * self.buf_len as usize)
        }
    }

    /// The kernel now holds `bid` (the owner posted it).
    #[inline]
    pub(crate) fn hold(&self, bid: u16) {
        self.refs[bid as usize].store(1, Ordering::Relaxed);
    }

    /// One more reference to `bid` (a new chunk while the kernel keeps the buffer, or a split).
    #[inline]
    pub(crate) fn acquire(&self, bid: u16) {
        self.refs[bid as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Drops one reference; the last one sends the buffer back to the owner.
    #[inline]
    pub(crate) fn release(&self, bid: u16) {
        let refs = &self.refs[bid as usize];
        if refs.load(Ordering::Acquire) == 1 {
            // We hold the only reference, so nobody can take another one (that needs a
            // reference already): skip the atomic read-modify-write, the common case of a
            // classic buffer with one chunk. The acquire load orders every earlier holder's
            // reads of the buffer (their releasing decrements) before the hand-back.
            refs.store(0, Ordering::Relaxed);
        } else {
            if refs.fetch_sub(1, Ordering::Release) != 1 {
                return;
            }
            // Every other holder's reads of the buffer happen before it is handed back.
            fence(Ordering::Acquire);
        }
        let mut top = self.returns.load(Ordering::Relaxed);
        loop {
            self.next[bid as usize].store(top, Ordering::Relaxed);
            match self.returns.compare_exchange_weak(
                top,
                bid as u32,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(t) => top = t,
            }
        }
    }

    /// Whether any buffer waits to be re-posted.
    #[inline]
    pub(crate) fn has_returns(&self) -> bool {
        self.returns.load(Ordering::Relaxed) != NIL
    }

    /// Takes every released bid at once and calls `f` on each.
    pub(crate) fn drain_returns(&self, mut f: impl FnMut(u16)) {
        let mut bid = self.returns.swap(NIL, Ordering::Acquire);
        while bid != NIL {
            let next = self.next[bid as usize].load(Ordering::Relaxed);
            f(bid as u16);
            bid = next;
        }
    }

    /// Live references to `bid` (for tests and statistics).
    pub(crate) fn refs(&self, bid: u16) -> u32 {
        self.refs[bid as usize].load(Ordering::Relaxed)
    }
}

/// A piece of a pool buffer holding received bytes.
///
/// A `Chunk` derefs to `[u8]` (and to `&mut [u8]`: chunks never overlap, so each one owns its
/// bytes). It is `Send` and `Sync`; dropping it anywhere is fine. The buffer goes back to the
/// kernel once the kernel has retired it and its last chunk is gone, at the pool's next
/// [`Pool::publish`](crate::Pool::publish).
///
/// The memory stays valid for as long as the chunk lives, even after the pool is dropped. To
/// hand the bytes to code that wants `bytes::Bytes`, `Bytes::from_owner(chunk)` wraps it
/// without copying.
pub struct Chunk {
    shared: Arc<Shared>,
    ptr: *mut u8,
    len: u32,
    offset: u32,
    bid: u16,
    last: bool,
}

// SAFETY: a chunk owns a disjoint byte range of memory kept alive by its `Arc<Shared>`; the
// kernel writes only ranges no chunk covers; the release path is atomic.
unsafe impl Send for Chunk {}
// SAFETY: `&Chunk` only reads its bytes.
unsafe impl Sync for Chunk {}

impl Chunk {
    /// Wraps `[offset, offset + len)` of buffer `bid`. The caller has taken the reference the
    /// chunk will give back.
    #[inline]
    pub(crate) fn new(shared: Arc<Shared>, bid: u16, offset: u32, len: u32, last: bool) -> Self {
        // SAFETY: `offset + len <= buf_len` was checked by the pool, so the pointer is inside
        // buffer `bid`.
        let ptr = unsafe { shared.buf_addr(bid).add(offset as usize) };
        Chunk {
            shared,
            ptr,
            len,
            offset,
            bid,
            last,
        }
    }

    /// What the chunk shares with its pool.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The buffer id.
    pub fn bid(&self) -> u16 {
        self.bid
    }

    /// Where the chunk starts in its buffer.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// The number of bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the chunk has no bytes (after advancing past all of them).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether this chunk ends where the kernel stopped using the buffer: no more data will
    /// land in this buffer until it has been returned and posted again.
    pub fn is_last(&self) -> bool {
        self.last
    }

    /// The buffer's full length.
    pub fn buf_len(&self) -> u32 {
        self.shared.buf_len
    }

    /// Skips the first `n` bytes. Panics if `n > len`, like slicing does.
    pub fn advance(&mut self, n: usize) {
        assert!(
            n <= self.len(),
            "advance {n} past the end of a {}-byte chunk",
            self.len
        );
        // SAFETY: n <= len, so the pointer stays inside the chunk's range.
        self.ptr = unsafe { self.ptr.add(n) };
        self.offset += n as u32;
        self.len -= n as u32;
    }

    /// Shortens the chunk to `len` bytes (no-op if it is already shorter).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.len = len as u32;
        }
    }

    /// Splits off `[0, at)` as a new chunk and keeps `[at, len)`. Panics if `at > len`.
    pub fn split_to(&mut self, at: usize) -> Chunk {
        assert!(
            at <= self.len(),
            "split_to {at} past the end of a {}-byte chunk",
            self.len
        );
        self.shared.acquire(self.bid);
        let front = Chunk {
            shared: Arc::clone(&self.shared),
            ptr: self.ptr,
            len: at as u32,
            offset: self.offset,
            bid: self.bid,
            last: false,
        };
        self.advance(at);
        front
    }

    /// Splits off `[at, len)` as a new chunk and keeps `[0, at)`. Panics if `at > len`.
    pub fn split_off(&mut self, at: usize) -> Chunk {
        assert!(
            at <= self.len(),
            "split_off {at} past the end of a {}-byte chunk",
            self.len
        );
        let front = self.split_to(at);
        std::mem::replace(self, front)
    }

    /// Whether `next` begins exactly where this chunk ends, in the same buffer.
    ///
    /// This is adjacency in memory, not in a stream: when several sockets share an incremental
    /// pool, or on emulated pools, pieces of different streams (or out of stream order) can sit
    /// side by side. Merge only chunks you know follow each other in one stream
    /// ([`RecvStream`](crate::RecvStream) does).
    pub fn is_adjacent(&self, next: &Chunk) -> bool {
        Arc::ptr_eq(&self.shared, &next.shared)
            && self.bid == next.bid
            && self.offset + self.len == next.offset
    }

    /// Appends `next` if it is adjacent (see [`is_adjacent`](Self::is_adjacent)), without
    /// copying; otherwise gives it back. Only for chunks that follow each other in one stream.
    pub fn try_merge(&mut self, next: Chunk) -> Result<(), Chunk> {
        if !self.is_adjacent(&next) {
            return Err(next);
        }
        self.len += next.len;
        self.last = next.last;
        // `next`'s reference is released by its drop; ours still covers the buffer.
        Ok(())
    }
}

impl Deref for Chunk {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` lies inside buffer `bid`, which the kernel no longer writes
        // (the range was committed in a completion) and which stays mapped while `shared` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len as usize) }
    }
}

impl DerefMut for Chunk {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`; chunks never overlap, so this one is the only way to the range.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len as usize) }
    }
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for Chunk {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl Drop for Chunk {
    #[inline]
    fn drop(&mut self) {
        self.shared.release(self.bid);
    }
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("bid", &self.bid)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("last", &self.last)
            .finish()
    }
}

#[cfg(all(test, loom))]
mod loom_tests;

// Plain-thread tests; under `--cfg loom` the atomics are loom's and only loom models run.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn chunk_and_pool_cross_threads() {
        assert_send_sync::<Chunk>();
        assert_send_sync::<crate::Pool>();
    }

    #[test]
    fn return_stack_gives_back_every_bid_once() {
        let region = Mmap::anonymous(4 * 16, crate::HugePages::Off).unwrap();
        let shared = Arc::new(Shared::new(region, 16, 4));
        for bid in 0..4 {
            shared.hold(bid);
        }
        let chunks: Vec<Chunk> = (0..4)
            .map(|bid| Chunk::new(Arc::clone(&shared), bid, 0, 16, true))
            .collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| std::thread::spawn(move || drop(c)))
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let mut got = Vec::new();
        shared.drain_returns(|bid| got.push(bid));
        got.sort();
        assert_eq!(got, [0, 1, 2, 3]);
        assert!(!shared.has_returns());
    }
}
