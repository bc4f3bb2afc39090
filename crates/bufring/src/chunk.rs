//! The handle a user holds: a piece of one pool buffer that the kernel has filled. It derefs
//! to the bytes, can be split and advanced without copying, can be sent to and dropped on
//! any thread, and gives its buffer back when the last piece of it is gone.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;

// The return path runs on loom's atomics under `--cfg loom`, so loom can check every
// interleaving of it (src/chunk/loom_tests.rs; see CONTRIBUTING.md).
#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicU32, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicU32, Ordering};

#[cfg(test)]
use crate::mem::Mmap;
use crate::mem::Region;

mod chunks;
pub use chunks::Chunks;
pub(crate) use chunks::Piece;

const NIL: u32 = u32::MAX;
/// What a buffer's count holds while the kernel keeps it on an incremental pool (see
/// [`Shared::hold_biased`]): far above any number of live chunks, far below overflow.
pub(crate) const BIAS: u32 = 1 << 30;
/// On the return stack once the pool is gone: a releaser then frees the buffer itself.
const CLOSED: u32 = u32::MAX - 1;
/// On the return stack when it is empty and its owner waits for a return (see
/// [`Shared::want_wake`]): the next releaser wakes it. A value of the same word as the stack, so
/// a release and the owner going to sleep cannot miss each other, and a release costs nothing
/// more when nobody waits.
const WANT: u32 = u32::MAX - 2;

/// What chunks share with their pool: the buffer memory, a reference count per buffer and the
/// lock-free stack on which released buffers travel back to the pool's owner.
///
/// # Lifetime
/// Chunks hold no `Arc` of their own: a `Shared` lives in an `Arc` whose strong count is the
/// pool's own plus one per buffer the pool was built with. A buffer's count goes where the
/// buffer goes: it stays with the pool while the pool holds the buffer (posted, or idle), and
/// travels with the buffer's last reference onto the return stack, from which the pool takes it
/// back when it drains (re-posting keeps it: no atomic operation). So while any reference to a
/// buffer lives, some count keeps the memory. When the pool goes, it [`close`](Self::close)s the
/// stack and drops the counts of the buffers it holds; a buffer still referenced then drops its
/// count when its last reference is released (it finds the stack closed). Test code that
/// builds a `Shared` without per-buffer counts keeps its own `Arc` alive instead, and never
/// closes.
pub(crate) struct Shared {
    region: Region,
    pub(crate) buf_len: u32,
    /// Per bid: live chunks, plus one while the kernel holds the buffer.
    refs: Box<[AtomicU32]>,
    /// Top of the stack of released bids (NIL when empty). Any thread pushes; only the owner
    /// takes, and it takes everything at once, so there is no ABA problem.
    returns: AtomicU32,
    next: Box<[AtomicU32]>,
    /// Where a release that finds [`WANT`] on the stack signals (an eventfd the owner's
    /// io_uring reads, see the driver); set once.
    notify: std::sync::OnceLock<Arc<std::os::fd::OwnedFd>>,
    /// Wake-ups sent by releases.
    wakes: AtomicU32,
}

impl Shared {
    pub(crate) fn new(region: impl Into<Region>, buf_len: u32, count: u32) -> Self {
        Shared {
            region: region.into(),
            buf_len,
            refs: (0..count).map(|_| AtomicU32::new(0)).collect(),
            returns: AtomicU32::new(NIL),
            next: (0..count).map(|_| AtomicU32::new(NIL)).collect(),
            notify: std::sync::OnceLock::new(),
            wakes: AtomicU32::new(0),
        }
    }

    /// The memory behind the buffers.
    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// The address of buffer `bid`'s first byte. Only an address: forming a slice from it is
    /// the business of [`Chunk`], whose contract says when that is allowed.
    #[inline]
    pub(crate) fn buf_addr(&self, bid: u16) -> *mut u8 {
        // `wrapping_add`: computing an address needs no proof; it lies in the region for every
        // bid below `count`, which is all the pool ever passes.
        self.region
            .as_ptr()
            .wrapping_add(bid as usize * self.buf_len as usize)
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

    /// Drops one reference; the last one sends the buffer back to the owner, or, once the pool
    /// is gone, drops the buffer's strong count (which may free `this`).
    ///
    /// # Safety
    /// `this` comes from [`Arc::as_ptr`] (or `Arc::into_raw`) of the `Arc` holding this
    /// `Shared`, the caller holds a reference to `bid` (which keeps the allocation alive, see
    /// [`Shared`]), and gives it up here: it must not touch `this` afterwards unless it holds
    /// an `Arc` of its own.
    #[inline]
    pub(crate) unsafe fn release(this: *const Shared, bid: u16) {
        // SAFETY: the caller's reference to `bid` keeps the allocation alive until the count
        // is dropped below, after the last use of `s`.
        let s = unsafe { &*this };
        let refs = &s.refs[bid as usize];
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
        // SAFETY: the last reference to `bid` just went; the caller's contract carries over.
        unsafe { Self::give_back(this, bid) }
    }

    /// The kernel now holds `bid`, and the owner counts the chunks it hands out of it while the
    /// kernel keeps it (incremental consumption): the count carries [`BIAS`] instead of one
    /// reference per such chunk, so handing one out costs no atomic operation.
    #[inline]
    pub(crate) fn hold_biased(&self, bid: u16) {
        self.refs[bid as usize].store(BIAS, Ordering::Relaxed);
    }

    /// Turns `n` chunks the owner handed out of a biased buffer into references of their own
    /// (the buffer stays biased): keeps the bias far from the chunks' decrements.
    pub(crate) fn settle_handed(&self, bid: u16, n: u32) {
        self.refs[bid as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// The kernel retired the biased buffer `bid`, out of which the owner handed `handed`
    /// chunks meanwhile (not yet counted, see [`settle_handed`](Self::settle_handed)); `keep`
    /// is 1 when a new chunk inherits the kernel's reference, else 0. Drops the bias: if no
    /// reference is left, the buffer goes back.
    ///
    /// # Safety
    /// As for [`release`](Self::release): `this` comes from `Arc::as_ptr`, and the bias (the
    /// kernel's reference) is the caller's to give up.
    #[inline]
    pub(crate) unsafe fn unbias(this: *const Shared, bid: u16, handed: u32, keep: u32) {
        // SAFETY: the bias keeps the allocation alive until it is dropped here.
        let s = unsafe { &*this };
        let delta = (handed + keep).wrapping_sub(BIAS);
        // AcqRel: if this ends the count, every chunk's release (a release decrement) happens
        // before the hand-back; if not, the last chunk's release sees ours.
        let before = s.refs[bid as usize].fetch_add(delta, Ordering::AcqRel);
        if before.wrapping_add(delta) == 0 {
            // SAFETY: no reference to `bid` is left; the caller's contract carries over.
            unsafe { Self::give_back(this, bid) }
        }
    }

    /// Hands `bid`, whose last reference just went, back to the owner (or, once the pool is
    /// gone, drops its strong count).
    ///
    /// # Safety
    /// `this` comes from `Arc::as_ptr`, nobody holds a reference to `bid`, and its strong
    /// count is the caller's to pass on.
    #[inline]
    unsafe fn give_back(this: *const Shared, bid: u16) {
        // SAFETY: the buffer's strong count (the caller's) keeps the allocation alive.
        let s = unsafe { &*this };
        let mut top = s.returns.load(Ordering::Relaxed);
        loop {
            if top == CLOSED {
                // The pool is gone and will not take the buffer: drop the count it would have.
                // SAFETY: `this` is the `Arc`'s pointer (caller's contract) and buffer `bid`'s
                // strong count is ours now (its last reference just went); `s` is not used
                // after this.
                unsafe { Arc::decrement_strong_count(this) };
                return;
            }
            let below = if top == WANT { NIL } else { top };
            s.next[bid as usize].store(below, Ordering::Relaxed);
            match s.returns.compare_exchange_weak(
                top,
                bid as u32,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) if top == WANT => {
                    // The owner waits for a return and this is the first: wake it. (The
                    // allocation is alive: the buffer's strong count is on the stack now, and the
                    // owner drains only after it is woken, or while it holds its own `Arc`.)
                    s.wake();
                    return;
                }
                Ok(_) => return,
                Err(t) => top = t,
            }
        }
    }

    /// The owner is about to wait for buffers to come back: the next release wakes it (see
    /// [`set_notify`](Self::set_notify)). Returns false if returns are already waiting (drain
    /// them instead of waiting) or the stack is closed.
    pub(crate) fn want_wake(&self) -> bool {
        match self
            .returns
            .compare_exchange(NIL, WANT, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => true,
            Err(top) => top == WANT,
        }
    }

    /// Where releases signal the owner once it [wants](Self::want_wake) a wake-up: an eventfd.
    /// Set once; later calls keep the first.
    pub(crate) fn set_notify(&self, fd: Arc<std::os::fd::OwnedFd>) {
        let _ = self.notify.set(fd);
    }

    /// Wake-ups sent by releases so far.
    pub(crate) fn wakes(&self) -> u32 {
        self.wakes.load(Ordering::Relaxed)
    }

    fn wake(&self) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
        if let Some(fd) = self.notify.get() {
            use std::os::fd::AsRawFd;
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we keep open through the
            // `Arc`. A failure (the counter saturated) still leaves the eventfd readable.
            unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Whether any buffer waits to be re-posted.
    #[inline]
    pub(crate) fn has_returns(&self) -> bool {
        // Bids are 16-bit; the markers (NIL, CLOSED, WANT) lie above.
        self.returns.load(Ordering::Relaxed) <= u32::from(u16::MAX)
    }

    /// Takes every released bid at once and calls `f` on each (with the bid comes its strong
    /// count, see [`Shared`]).
    #[inline]
    pub(crate) fn drain_returns(&self, f: impl FnMut(u16)) {
        self.take_returns(NIL, f)
    }

    /// The pool is going: takes every released bid (calls `f` on each) and closes the stack,
    /// so that later releases drop their buffer's strong count themselves.
    pub(crate) fn close(&self, f: impl FnMut(u16)) {
        self.take_returns(CLOSED, f)
    }

    #[inline]
    fn take_returns(&self, new_top: u32, mut f: impl FnMut(u16)) {
        let mut bid = self.returns.swap(new_top, Ordering::Acquire);
        debug_assert_ne!(bid, CLOSED, "the return stack is closed once");
        while bid <= u32::from(u16::MAX) {
            let next = self.next[bid as usize].load(Ordering::Relaxed);
            f(bid as u16);
            bid = next;
        }
    }

    /// The pointer chunks keep: `Arc::as_ptr`, which keeps the provenance of the whole `Arc`
    /// allocation (`Arc::decrement_strong_count` in [`release`](Self::release) needs it).
    #[inline]
    pub(crate) fn ptr(this: &Arc<Shared>) -> NonNull<Shared> {
        // SAFETY: `Arc::as_ptr` is never null.
        unsafe { NonNull::new_unchecked(Arc::as_ptr(this).cast_mut()) }
    }

    /// The count of `bid` as it is (with the bias, if any; for tests).
    #[cfg(any(test, feature = "model"))]
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
    /// `Arc::as_ptr` of the pool's `Shared`; the chunk's reference to `bid` keeps it alive.
    shared: NonNull<Shared>,
    ptr: *mut u8,
    len: u32,
    bid: u16,
    last: bool,
}

// SAFETY: a chunk owns a disjoint byte range of memory kept alive by its buffer's strong count
// on the `Shared` (see `Shared`); `Shared` is `Send + Sync`; the kernel writes only ranges no
// chunk covers; the release path is atomic.
unsafe impl Send for Chunk {}
// SAFETY: `&Chunk` only reads its bytes.
unsafe impl Sync for Chunk {}

impl Chunk {
    /// Wraps `[offset, offset + len)` of buffer `bid`.
    ///
    /// # Safety
    /// `bid < count` and `offset + len <= buf_len`; the kernel has written that range and will
    /// not write it again while the chunk lives (a completion committed it, and the buffer is
    /// posted again only after its last reference is gone); no other chunk covers it; and the
    /// caller has taken the reference to `bid` the chunk will give back, which keeps `shared`
    /// alive (see [`Shared`]). `shared` is `Arc::as_ptr` of the `Arc` holding the `Shared`.
    #[inline]
    pub(crate) unsafe fn new(
        shared: NonNull<Shared>,
        bid: u16,
        offset: u32,
        len: u32,
        last: bool,
    ) -> Self {
        // SAFETY: the caller's reference to `bid` keeps `shared` alive.
        let s = unsafe { shared.as_ref() };
        // SAFETY: `offset + len <= buf_len` (caller), so the pointer stays inside buffer `bid`.
        let ptr = unsafe { s.buf_addr(bid).add(offset as usize) };
        Chunk {
            shared,
            ptr,
            len,
            bid,
            last,
        }
    }

    /// A chunk over `bytes` on the heap, outside any pool: freed with the chunk.
    fn heap(bytes: Vec<u8>) -> Chunk {
        debug_assert!(bytes.len() <= u32::MAX as usize);
        let len = bytes.len() as u32;
        let shared = Arc::new(Shared::new(Region::heap(bytes), len, 1));
        shared.hold(0);
        // No pool takes this buffer back: with the stack closed, the last release drops the
        // strong count, which the chunk's reference holds from here (`into_raw`).
        shared.close(|_| {});
        let ptr = NonNull::new(Arc::into_raw(shared).cast_mut()).expect("Arc is never null");
        // SAFETY: bid 0 is the whole of a one-buffer region nothing else writes; `hold` made the
        // reference the chunk gives back, and with it goes the `Arc`'s only strong count.
        unsafe { Chunk::new(ptr, 0, 0, len, true) }
    }

    /// A copy of this chunk's bytes on the heap, which holds no pool buffer: what a holder keeps
    /// instead of a chunk it will hold for long (a slow reader), so the buffer can go back to the
    /// kernel. The copy's [`bid`](Self::bid) is 0 and it is [not in a pool](Self::in_pool).
    pub fn to_heap(&self) -> Chunk {
        Chunk::heap(self.to_vec())
    }

    /// Whether the chunk views a pool buffer (rather than heap memory, see
    /// [`to_heap`](Self::to_heap) and `TryFrom<Vec<u8>>`).
    pub fn in_pool(&self) -> bool {
        self.shared().region().mapping().is_some()
    }

    /// What the chunk shares with its pool.
    #[inline]
    fn shared(&self) -> &Shared {
        // SAFETY: the chunk's reference to its buffer keeps the `Shared` alive (see `Shared`).
        unsafe { self.shared.as_ref() }
    }

    /// The buffer id.
    pub fn bid(&self) -> u16 {
        self.bid
    }

    /// Where the chunk starts in its buffer.
    pub fn offset(&self) -> u32 {
        // Derived, not stored: a chunk of 24 bytes lets a one-buffer `Chunks` (and so a
        // `Completion`) stay small enough to move through registers.
        (self.ptr as usize - self.shared().buf_addr(self.bid) as usize) as u32
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
        self.shared().buf_len
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
        self.len -= n as u32;
    }

    /// Shortens the chunk to `len` bytes (no-op if it is already shorter).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.len = len as u32;
        }
    }

    /// Splits off `[0, at)` as a new chunk and keeps `[at, len)`. Panics if `at > len`.
    #[must_use = "consider Chunk::advance if you don't need the other half"]
    pub fn split_to(&mut self, at: usize) -> Chunk {
        assert!(
            at <= self.len(),
            "split_to {at} past the end of a {}-byte chunk",
            self.len
        );
        self.shared().acquire(self.bid);
        let front = Chunk {
            shared: self.shared,
            ptr: self.ptr,
            len: at as u32,
            bid: self.bid,
            last: false,
        };
        self.advance(at);
        front
    }

    /// Splits off `[at, len)` as a new chunk and keeps `[0, at)`. Panics if `at > len`.
    #[must_use = "consider Chunk::truncate if you don't need the other half"]
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
        self.shared == next.shared
            && self.bid == next.bid
            && self.ptr.wrapping_add(self.len as usize) == next.ptr
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

/// Takes a vector's bytes without copying, as a chunk that is not [in a pool](Chunk::in_pool) (to
/// send them where chunks are expected, for example). Gives the vector back if it holds more
/// than `u32::MAX` bytes.
impl TryFrom<Vec<u8>> for Chunk {
    type Error = Vec<u8>;
    fn try_from(v: Vec<u8>) -> Result<Chunk, Vec<u8>> {
        if v.len() > u32::MAX as usize {
            return Err(v);
        }
        Ok(Chunk::heap(v))
    }
}

impl Deref for Chunk {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` lies inside buffer `bid`, which the kernel no longer writes
        // (the range was committed in a completion) and which stays mapped while the chunk's
        // reference to the buffer lives.
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
        // SAFETY: `shared` is the `Arc`'s pointer and the chunk gives up its reference here;
        // nothing touches `shared` afterwards.
        unsafe { Shared::release(self.shared.as_ptr(), self.bid) };
    }
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("bid", &self.bid)
            .field("offset", &self.offset())
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
            // SAFETY: whole buffers nothing writes; each chunk takes the reference `hold` made.
            .map(|bid| unsafe { Chunk::new(Shared::ptr(&shared), bid, 0, 16, true) })
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

    /// The pool's protocol (one strong count per buffer, `close` when the pool goes): the
    /// memory is freed once the last chunk is gone, whichever goes last, and not before.
    #[test]
    fn closing_frees_the_memory_with_the_last_chunk() {
        let region = Mmap::anonymous(3 * 16, crate::HugePages::Off).unwrap();
        let shared = Arc::new(Shared::new(region, 16, 3));
        for _ in 0..3 {
            std::mem::forget(Arc::clone(&shared));
        }
        let weak = Arc::downgrade(&shared);
        for bid in 0..3 {
            shared.hold(bid);
        }
        // SAFETY (the three chunks): ranges of buffers nothing writes, each with the reference
        // `hold` (or `acquire`) made.
        let early = unsafe { Chunk::new(Shared::ptr(&shared), 0, 0, 16, true) }; // returned before the close
        let late = unsafe { Chunk::new(Shared::ptr(&shared), 1, 0, 16, true) }; // outlives the pool
        shared.acquire(2);
        let mut split = unsafe { Chunk::new(Shared::ptr(&shared), 2, 0, 8, false) }; // buffer 2 stays with the kernel
        let piece = split.split_to(4);
        drop(early);
        // What `Pool::drop` does.
        let ptr = Arc::as_ptr(&shared);
        let mut closed = Vec::new();
        shared.close(|bid| {
            closed.push(bid);
            // SAFETY: the count of a bid on the stack is the closer's; `shared` is alive.
            unsafe { Arc::decrement_strong_count(ptr) }
        });
        assert_eq!(closed, [0]);
        // SAFETY: the kernel's reference to buffer 2 is ours to give up; `shared` is alive.
        unsafe { Shared::release(ptr, 2) };
        drop(shared);
        assert_eq!(weak.strong_count(), 2, "buffers 1 and 2 keep the memory");
        assert_eq!(&late[..], &[0u8; 16][..]);
        drop(split);
        drop(late);
        assert_eq!(weak.strong_count(), 1);
        assert_eq!(piece.len(), 4);
        drop(piece);
        assert!(weak.upgrade().is_none(), "the last chunk frees the memory");
    }
}
