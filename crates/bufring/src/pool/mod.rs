//! The pool: `count` buffers of `buf_len` bytes in one region, posted on one buffer ring (or a
//! legacy buffer group). It turns CQEs into chunks after checking them, keeps the cursor of
//! each incremental buffer, and posts a buffer again once the kernel has retired it and its
//! last chunk is gone.
//!
//! # The life of a buffer, and where each step is
//! ```text
//!    free ──post──▶ posted ──kernel selects──▶ current (incremental: partly filled, F_BUF_MORE)
//!     ▲                                            │
//!     │                                kernel retires it (CQE without F_BUF_MORE)
//!     │                                            ▼
//!     └──── last chunk dropped ◀──────────── retired, chunks alive
//! ```
//! - **post**: [`Pool::post_entry`] (this file) writes the entry and records it in the
//!   [ledger](ledger); [`Pool::publish`] makes a batch visible with one tail store
//!   ([`BufRing::advance`]), or hands legacy SQEs out ([`Pool::provide`]).
//! - **complete**: [`Pool::complete`] (complete.rs) checks the CQE against the ledger, moves the
//!   cursor (`Ledger::advance`) or retires the buffer (`Ledger::retire`), and forms the chunks.
//! - **return**: a chunk's drop (`Shared::release`, chunk.rs) pushes the buffer on a lock-free
//!   stack when its last reference goes; [`Pool::publish`] drains the stack and posts them.

use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Arc;

use crate::chunk::Shared;
use crate::ring::BufRing;

mod builder;
mod complete;
#[cfg(feature = "model")]
mod detached;
mod ledger;
mod legacy;
mod sqe;
mod stats;

pub use builder::{Backend, Incremental, PoolBuilder};
pub use sqe::Target;
pub(crate) use stats::record_leak;
pub use stats::{leaks, Leaks, PoolStats};

use ledger::Ledger;
use legacy::Legacy;

/// Chunks the ledger counts for a biased buffer before they go into its shared count: far
/// below the bias (1 << 30), so the chunks' decrements can never bring the count to 1; one
/// atomic operation per 4096 pieces.
const HANDED_FLUSH: u32 = 1 << 12;

/// Where posted buffers go: the two backends behind one interface (positions, tail, mask).
pub(crate) enum Feed {
    Ring(BufRing),
    Legacy(Legacy),
}

impl Feed {
    /// The published tail: positions below it are visible to the kernel.
    #[inline]
    fn tail(&self) -> u16 {
        match self {
            Feed::Ring(r) => r.tail(),
            Feed::Legacy(l) => l.tail,
        }
    }

    /// `positions - 1`.
    #[inline]
    fn mask(&self) -> u16 {
        match self {
            Feed::Ring(r) => r.mask(),
            Feed::Legacy(l) => l.mask,
        }
    }
}

/// What the pool's SQE builders have made, which decides how completions are read. Atomics
/// (relaxed) so that building an SQE takes `&self` and the pool stays `Sync`.
#[derive(Debug, Default)]
struct Built {
    /// A bundle receive (or `PoolBuilder::bundles`): a completion may span several buffers.
    bundles: AtomicBool,
    /// On kernel incremental pools: the length of the last read of a regular file (0: none).
    /// Such reads commit the selected length, not the bytes read.
    file_read_len: AtomicU32,
    /// On kernel incremental pools: a receive or read of a pollable file (commits the bytes).
    streams: AtomicBool,
}

/// Provided buffers on one buffer ring (or, on kernels without rings, a legacy buffer group):
/// the raw layer.
///
/// Build it with [`Pool::builder`], submit receives made by its SQE builders
/// ([`recv_multishot`](Self::recv_multishot) and friends), hand every CQE of those requests to
/// [`complete`](Self::complete), and call [`publish`](Self::publish) once per batch of CQEs. A
/// legacy pool also needs [`provide`](Self::provide) after `publish` (it does nothing on rings).
///
/// # What you vouch for
/// As with any buffer given to io_uring, the kernel may write into the pool's buffers while a
/// request that selects from it is in flight. Keep the pool alive until every such request has
/// completed for good (a CQE without F_MORE) or been cancelled: pushing the SQE is where you
/// vouch for that (`SubmissionQueue::push` is `unsafe`). Completing a CQE is the other hand-off
/// ([`complete`](Self::complete) is `unsafe`): the CQE must be the kernel's, for this pool,
/// handed over once. Chunks themselves need no care: their memory stays valid while they live,
/// even after the pool is dropped.
pub struct Pool {
    // Field order is drop order: the ring is unregistered before the buffer memory can go.
    feed: Feed,
    shared: Arc<Shared>,
    ledger: Ledger,
    /// `Off`, `Kernel` or `Emulated` (never `Auto` once built).
    mode: Incremental,
    /// Incremental pools retire a buffer once fewer bytes than this remain (at least 1).
    min_left: u32,
    /// Entries written since the last tail store.
    pending: u16,
    /// Buffers posted when the pool was built (the rest started parked).
    initial: u32,
    /// How many buffers to keep posted (see `set_posted_target`).
    target: u32,
    /// Buffers kept out of the ring, most recently parked on top: the bottom ones have been
    /// idle longest.
    parked: Vec<u16>,
    /// The bottom `trimmed` parked buffers have had their pages given back.
    trimmed: usize,
    /// The fewest buffers parked since the last `trim_idle`: the bottom ones of that many
    /// stayed parked all along.
    parked_low: usize,
    huge_pages: crate::HugePages,
    stats: PoolStats,
    built: Built,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("bgid", &self.bgid())
            .field("count", &self.count())
            .field("buf_len", &self.buf_len())
            .field("incremental", &self.incremental())
            .field("backend", &self.backend())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let mut leaked = self.count() as usize * self.buf_len() as usize;
        let kernel_may_write = match &mut self.feed {
            // Unregister first, so that the kernel has no way into the buffers any more. If the
            // kernel refuses (EEXIST from another thread than a SINGLE_ISSUER ring's owner), an
            // armed receive could still write into them: they must never be unmapped, and
            // neither is the ring.
            Feed::Ring(ring) => match ring.unregister_in_place() {
                Ok(()) => false,
                Err(_) => {
                    leaked += ring.abandon();
                    true
                }
            },
            // The kernel may still hold some legacy buffers (there is no way to take them back
            // without the user's ring); `remove_buffers` avoids this.
            Feed::Legacy(_) => self.legacy_provided() > 0,
        };
        if kernel_may_write {
            std::mem::forget(Arc::clone(&self.shared));
            stats::record_leak(leaked);
        }
        // Give up the strong counts of the buffers the pool holds (see `Shared`): those
        // returned but not re-posted, and, dropping the kernel's reference, those the kernel
        // holds (a buffer that still has chunks passes its count to its last chunk). Buffers
        // with the application drop theirs when their last reference goes: the stack is closed.
        // The pool's own `Arc` keeps the memory until the fields drop.
        let ptr = Arc::as_ptr(&self.shared);
        // SAFETY: the count of each bid on the stack is the pool's now, and the pool's own
        // `Arc` keeps the count above zero here.
        self.shared
            .close(|_| unsafe { Arc::decrement_strong_count(ptr) });
        for _ in self.parked.drain(..) {
            // SAFETY: a parked buffer's count is the pool's, as for those on the stack.
            unsafe { Arc::decrement_strong_count(ptr) };
        }
        for bid in 0..self.count() as u16 {
            if self.ledger.in_kernel(bid) {
                self.drop_kernel_ref(bid, false);
            }
        }
    }
}

impl Pool {
    /// The buffer group id that receives name in their SQEs.
    pub fn bgid(&self) -> u16 {
        match &self.feed {
            Feed::Ring(r) => r.bgid(),
            Feed::Legacy(l) => l.bgid,
        }
    }

    /// Number of buffers.
    pub fn count(&self) -> u32 {
        self.ledger.count() as u32
    }

    /// Length of each buffer.
    pub fn buf_len(&self) -> u32 {
        self.shared.buf_len
    }

    /// Whether buffers are consumed a piece at a time (by the kernel or emulated): chunks then
    /// may not be [last](crate::Chunk::is_last) in their buffer.
    pub fn is_incremental(&self) -> bool {
        self.mode != Incremental::Off
    }

    /// The incremental consumption the pool got: [`Incremental::Off`], [`Incremental::Kernel`]
    /// or [`Incremental::Emulated`] (never `Auto`).
    pub fn incremental(&self) -> Incremental {
        self.mode
    }

    /// On incremental pools, a buffer is retired once fewer bytes than this remain in it (1:
    /// only when it is full). Meaningless on classic pools.
    pub fn min_left(&self) -> u32 {
        self.min_left
    }

    /// The backend the pool got: [`Backend::Ring`] or [`Backend::Legacy`] (never `Auto`).
    pub fn backend(&self) -> Backend {
        match self.feed {
            Feed::Ring(_) => Backend::Ring,
            Feed::Legacy(_) => Backend::Legacy,
        }
    }

    /// The ring underneath (head, available, entries), or `None` for a legacy pool
    /// ([`Backend::Legacy`]), which has no ring.
    pub fn ring(&self) -> Option<&BufRing> {
        match &self.feed {
            Feed::Ring(r) => Some(r),
            Feed::Legacy(_) => None,
        }
    }

    /// The counters.
    pub fn stats(&self) -> PoolStats {
        // Derived here rather than counted per completion (hot path). `initial` buffers are
        // posted at build; each retirement hands one to the application, each re-post takes
        // one back (from the application or from the parked ones).
        let in_kernel = self.posted();
        let parked = self.parked.len() as u32;
        PoolStats {
            with_app: self.count() - in_kernel - parked,
            in_kernel,
            parked,
            posted_target: self.target,
            bytes_retired: self.stats.buffers_retired * u64::from(self.shared.buf_len),
            ..self.stats
        }
    }

    /// Whether the pool was built for bundle receives ([`PoolBuilder::bundles`]), on a ring.
    pub(crate) fn bundles_declared(&self) -> bool {
        matches!(self.feed, Feed::Ring(_))
            && self
                .built
                .bundles
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Buffers parked (see [`set_posted_target`](Self::set_posted_target)).
    pub(crate) fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Buffers the kernel holds now (posted, or partly filled).
    #[inline]
    fn posted(&self) -> u32 {
        (u64::from(self.initial) + self.stats.reposted - self.stats.buffers_retired) as u32
    }

    /// Keeps at most `n` buffers (at least 1, at most [`count`](Self::count)) posted: buffers
    /// that come back while the kernel holds that many are parked instead of posted, and parked
    /// buffers are posted again (most recently parked first, whose pages are warm) when the
    /// kernel holds fewer. Returns the target set. Lowering it takes nothing back from the
    /// kernel; the buffers park as they return. With the target at the traffic's need, only
    /// the buffers in use get their pages touched, instead of every buffer the ring rotates
    /// through. Takes effect at the next [`publish`](Self::publish).
    pub fn set_posted_target(&mut self, n: u32) -> u32 {
        self.target = n.clamp(1, self.count());
        self.target
    }

    /// The number of buffers the pool keeps posted (see
    /// [`set_posted_target`](Self::set_posted_target)).
    pub fn posted_target(&self) -> u32 {
        self.target
    }

    /// Gives back to the system the pages of the buffers that stayed parked since the last
    /// call (`madvise(MADV_DONTNEED)`: they read as zeros when touched again, and cost no RAM
    /// meanwhile). Call it now and then (the driver does every second); returns the bytes given
    /// back. Buffers are given back whole pages at a time; pools on explicit huge pages keep
    /// theirs.
    pub fn trim_idle(&mut self) -> u64 {
        let idle = self.parked_low;
        self.parked_low = self.parked.len();
        if idle <= self.trimmed {
            return 0;
        }
        let page = crate::mem::page_size();
        let mut given = 0u64;
        if self.huge_pages != crate::HugePages::Explicit {
            for &bid in &self.parked[self.trimmed..idle] {
                let start = self.shared.buf_addr(bid) as usize;
                let end = start + self.shared.buf_len as usize;
                let (a, b) = (start.next_multiple_of(page), end / page * page);
                if b > a {
                    // SAFETY: `a..b` lies inside buffer `bid`, which is parked: neither the
                    // kernel (not posted) nor any chunk (its last one is gone) uses it, and
                    // MADV_DONTNEED on private anonymous memory only drops its contents.
                    unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_DONTNEED) };
                    given += (b - a) as u64;
                }
            }
        }
        self.trimmed = idle;
        self.stats.trimmed_bytes += given;
        given
    }

    /// Bytes of the pool's buffers that are resident in RAM now (`mincore`): what the pool
    /// costs in memory, as opposed to the address space it reserves.
    pub fn resident_bytes(&self) -> crate::Result<u64> {
        let Some(map) = self.shared.region().mapping() else {
            return Ok(0);
        };
        let page = crate::mem::page_size();
        let pages = map.len().div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is our mapping, and `vec` has one byte per page of it.
        let r = unsafe { libc::mincore(map.as_ptr().cast(), map.len(), vec.as_mut_ptr()) };
        if r != 0 {
            return Err(crate::Error::kernel(
                "mincore of the buffer region",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page as u64)
    }

    /// The next release of a buffer's last chunk, on any thread, signals the pool's notify
    /// eventfd (see the driver). Returns false if buffers already came back (publish instead
    /// of waiting).
    pub(crate) fn want_wake(&self) -> bool {
        self.shared.want_wake()
    }

    /// Where releases signal once the owner [wants](Self::want_wake) a wake-up.
    pub(crate) fn set_notify(&self, fd: Arc<std::os::fd::OwnedFd>) {
        self.shared.set_notify(fd);
    }

    /// Wake-ups releases sent.
    pub(crate) fn wakes(&self) -> u32 {
        self.shared.wakes()
    }

    /// Entries posted that no completion has shown consumed yet: what the kernel has left to
    /// select from, as far as the completions seen so far tell.
    pub(crate) fn unused(&self) -> u32 {
        u32::from(self.feed.tail().wrapping_sub(self.ledger.head()))
    }

    /// Whether buffers came back since the last publish.
    pub(crate) fn has_returns(&self) -> bool {
        self.shared.has_returns()
    }

    /// The pool's copy of the kernel's ring head: every ring position below it has been
    /// consumed by the kernel, as completions seen so far prove (CQEs of different requests may
    /// arrive out of ring order, so the kernel's head can be ahead). Equals the kernel's head
    /// ([`BufRing::head`]) once every completion has been handed over. On legacy pools,
    /// positions count the buffers handed to the kernel's first-in-first-out list.
    pub fn shadow_head(&self) -> u16 {
        self.ledger.head()
    }

    /// Unregisters the pool's ring now and frees the pool, or, if the kernel refuses, hands the
    /// pool back with the kernel's answer so the caller can try again where it can succeed (for
    /// example on the thread that owns an `IORING_SETUP_SINGLE_ISSUER` ring, where another
    /// thread gets EEXIST). Dropping a pool does the same, but can only leak the memory when
    /// the kernel refuses (see [`leaks`](crate::leaks)).
    ///
    /// A legacy pool whose buffers the kernel may still hold (see
    /// [`remove_buffers`](Self::remove_buffers)) comes back with an EBUSY error.
    // The pool itself comes back on failure (a cold path, called once): no box needed.
    #[allow(clippy::result_large_err)]
    pub fn close(mut self) -> std::result::Result<(), (Pool, crate::Error)> {
        let held = self.legacy_provided();
        let bgid = self.bgid();
        let refused = match &mut self.feed {
            Feed::Ring(ring) => ring.unregister_in_place().err(),
            Feed::Legacy(_) => (held > 0).then(|| {
                crate::Error::kernel(
                    format!("close legacy buffer group {bgid}"),
                    std::io::Error::from_raw_os_error(libc::EBUSY),
                )
            }),
        };
        match refused {
            Some(e) => Err((self, e)),
            // Unregistered: the drop frees everything.
            None => Ok(()),
        }
    }

    /// Hands buffer `bid`, whole, to the kernel: the kernel's reference starts now. On
    /// incremental pools it is a bias that stands for the chunks handed out while the kernel
    /// keeps the buffer, which the ledger counts without atomics (see `Shared::hold_biased`).
    #[inline]
    fn post(&mut self, bid: u16) {
        if self.mode == Incremental::Off {
            self.shared.hold(bid);
        } else {
            self.shared.hold_biased(bid);
        }
        self.post_entry(bid, 0);
    }

    /// A chunk of `bid` goes out while the kernel keeps the buffer (incremental pools).
    #[inline]
    fn hand_out(&mut self, bid: u16) {
        if self.ledger.hand_out(bid) == HANDED_FLUSH {
            // Far from the bias still, but count these chunks for real before it gets close.
            self.shared.settle_handed(bid, self.ledger.take_handed(bid));
        }
    }

    /// The kernel gave up buffer `bid` (retired it, or the pool is going): its reference goes
    /// to the chunk formed now (`inherit`), or is dropped, which gives the buffer back if no
    /// chunk of it is left.
    #[inline]
    fn drop_kernel_ref(&mut self, bid: u16, inherit: bool) {
        let ptr = Arc::as_ptr(&self.shared);
        if self.mode == Incremental::Off {
            if !inherit {
                // SAFETY: `ptr` is the `Arc`'s pointer, the kernel's reference to `bid` is the
                // pool's to give up, and the pool's own `Arc` outlives the call.
                unsafe { Shared::release(ptr, bid) };
            }
        } else {
            let handed = self.ledger.take_handed(bid);
            // SAFETY: as above, for the bias that stands for the kernel's reference.
            unsafe { Shared::unbias(ptr, bid, handed, u32::from(inherit)) };
        }
    }

    /// Writes an entry for the part of buffer `bid` from `offset` on at the next free slot
    /// (not yet published), and records it in the ledger. The caller has given the kernel its
    /// reference.
    #[inline]
    fn post_entry(&mut self, bid: u16, offset: u32) {
        self.ledger.post(bid, offset);
        match &mut self.feed {
            Feed::Ring(ring) => {
                let pos = ring.tail().wrapping_add(self.pending);
                self.ledger.place(bid, pos);
                // SAFETY: `offset < buf_len`, so the range lies in buffer `bid` of our region,
                // which outlives the registration (the ring is unregistered first, and leaked
                // with it if that fails); no chunk covers `offset..` (the buffer is new, was
                // released, or its chunks end at `offset`); and each buffer has at most one
                // entry in the ring, `count <= entries`, so the slot is not the kernel's.
                unsafe {
                    ring.add(
                        self.shared.buf_addr(bid) as u64 + u64::from(offset),
                        self.shared.buf_len - offset,
                        bid,
                        self.pending,
                    );
                }
                self.pending += 1;
            }
            Feed::Legacy(l) => l.staged.push(bid),
        }
    }

    /// Posts every buffer whose last chunk has been dropped, then publishes them all with one
    /// tail store. Returns how many entries went to the kernel (returned buffers, and the rests
    /// that emulated incremental consumption posted). Call it once per batch of completions
    /// (like liburing's `io_uring_buf_ring_cq_advance`), and before re-arming after
    /// [`Completion::NoBuffers`](crate::Completion::NoBuffers). On a legacy pool the entries
    /// wait for [`provide`](Self::provide).
    #[inline]
    pub fn publish(&mut self) -> u32 {
        if self.shared.has_returns() {
            let shared = Arc::clone(&self.shared);
            shared.drain_returns(|bid| {
                if self.posted() < self.target {
                    self.post(bid);
                    self.stats.reposted += 1;
                } else {
                    self.parked.push(bid);
                }
            });
        }
        while self.posted() < self.target {
            let Some(bid) = self.parked.pop() else { break };
            let left = self.parked.len();
            self.trimmed = self.trimmed.min(left);
            self.parked_low = self.parked_low.min(left);
            self.post(bid);
            self.stats.reposted += 1;
        }
        match &mut self.feed {
            Feed::Ring(ring) => {
                let n = self.pending;
                if n > 0 {
                    // SAFETY: the `n` entries after the tail were written by `post_entry`, each
                    // for a buffer range no chunk covers.
                    unsafe { ring.advance(n) };
                    self.pending = 0;
                    self.stats.publishes += 1;
                }
                u32::from(n)
            }
            Feed::Legacy(l) => l.staged.len() as u32,
        }
    }
}

/// Test hooks: the ledger as the pool sees it (feature `model`).
#[cfg(feature = "model")]
impl Pool {
    /// Where the next byte lands in buffer `bid` (0 unless it is partly filled).
    pub fn cursor(&self, bid: u16) -> Option<u32> {
        ((bid as usize) < self.ledger.count()).then(|| self.ledger.cursor(bid))
    }

    /// Live references to buffer `bid`: its chunks, plus one while the kernel holds it.
    pub fn refs(&self, bid: u16) -> Option<u32> {
        ((bid as usize) < self.ledger.count()).then(|| {
            let raw = self.shared.refs(bid);
            if self.mode != Incremental::Off && self.ledger.in_kernel(bid) {
                // Biased: the bias stands for the kernel's reference and the chunks the ledger
                // counts.
                raw.wrapping_sub(crate::chunk::BIAS)
                    .wrapping_add(self.ledger.handed(bid) + 1)
            } else {
                raw
            }
        })
    }

    /// The bid whose entry sits at ring position `pos` (mask applied), as the pool wrote it
    /// (on legacy pools: the bid handed out `pos`-th).
    pub fn shadow_slot(&self, pos: u16) -> u16 {
        self.ledger.at(pos)
    }
}
