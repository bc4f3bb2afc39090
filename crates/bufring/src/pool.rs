//! The pool: `count` buffers of `buf_len` bytes in one region, posted on one buffer ring.
//! It turns CQEs into chunks after checking them, keeps the cursor of each incremental buffer,
//! and re-posts a buffer once the kernel has retired it and its last chunk is gone.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::chunk::{Chunk, Shared};
use crate::completion::{Completion, CqeFlags};
use crate::error::{BadCompletion, Error, Feature, Result};
use crate::mem::{HugePages, Mmap};
use crate::ring::BufRing;
use crate::sys;

/// Whether each buffer is consumed a piece at a time, and by whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Incremental {
    /// Classic ring: every completion takes a whole buffer (the default).
    #[default]
    Off,
    /// Kernel incremental consumption (IOU_PBUF_RING_INC, Linux 6.12); building the pool fails
    /// with [`Error::Unsupported`] on older kernels.
    Kernel,
    /// Incremental consumption done by bufring on a classic ring (or on legacy provided
    /// buffers): after a completion used part of a buffer, the rest of it is posted again
    /// (address + cursor, same bid) while at least [`PoolBuilder::min_left`] bytes (at least 1)
    /// remain. Works on every kernel with provided buffers; costs one ring entry per completion.
    Emulated,
    /// [`Kernel`](Self::Kernel) when the running kernel supports it (with `min_left` if one was
    /// asked for), else [`Emulated`](Self::Emulated). [`Pool::incremental`] says which one the
    /// pool got.
    Auto,
}

/// Which kernel mechanism gives the pool's buffers to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// A buffer ring when the kernel has them (5.19), else legacy provided buffers (the
    /// default). [`Pool::backend`] says which one the pool got.
    #[default]
    Auto,
    /// A provided buffer ring (IORING_REGISTER_PBUF_RING, Linux 5.19).
    Ring,
    /// Legacy provided buffers (IORING_OP_PROVIDE_BUFFERS, Linux 5.7): buffers go to the kernel
    /// through SQEs that the pool hands to you ([`Pool::provide`]), batched.
    Legacy,
}

/// Configuration of a [`Pool`]; made by [`Pool::builder`].
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    bgid: u16,
    count: usize,
    buf_len: usize,
    entries: Option<u32>,
    incremental: Incremental,
    backend: Backend,
    kernel_allocated: bool,
    min_left: u32,
    huge_pages: HugePages,
    bundles: bool,
}

impl PoolBuilder {
    /// Number of buffers (1 to 32768; default 64).
    pub fn count(mut self, count: usize) -> Self {
        self.count = count;
        self
    }

    /// Length of each buffer in bytes (default 64 KiB).
    pub fn buf_len(mut self, buf_len: usize) -> Self {
        self.buf_len = buf_len;
        self
    }

    /// Ring entries (a power of two, at least `count`; default: `count` rounded up).
    pub fn ring_entries(mut self, entries: u32) -> Self {
        self.entries = Some(entries);
        self
    }

    /// Incremental consumption (default [`Incremental::Off`]).
    pub fn incremental(mut self, mode: Incremental) -> Self {
        self.incremental = mode;
        self
    }

    /// Buffer ring or legacy provided buffers (default [`Backend::Auto`]).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Let the kernel allocate the ring memory (IOU_PBUF_RING_MMAP).
    pub fn kernel_allocated(mut self, on: bool) -> Self {
        self.kernel_allocated = on;
        self
    }

    /// With incremental consumption: retire a buffer when fewer than `min_left` bytes remain.
    /// The kernel does it on rings registered with `min_left` (see [`Feature::MinLeft`]);
    /// [`Incremental::Emulated`] does it itself.
    ///
    /// [`Feature::MinLeft`]: crate::Feature::MinLeft
    pub fn min_left(mut self, min_left: u32) -> Self {
        self.min_left = min_left;
        self
    }

    /// Back the buffers with huge pages.
    pub fn huge_pages(mut self, huge: HugePages) -> Self {
        self.huge_pages = huge;
        self
    }

    /// Declare that bundle receives ([`Pool::recv_bundle`]) will select from this pool:
    /// [`build`](Self::build) then fails with [`Error::Unsupported`] when the kernel lacks
    /// bundles ([`Feature::Bundles`]) or, with kernel incremental consumption, bundles on
    /// incremental rings ([`Feature::IncrementalBundles`]); [`Incremental::Auto`] then falls
    /// back to emulation. Checking costs a scratch io_uring at build time. Legacy pools skip
    /// the check: their bundle builders make plain receives.
    ///
    /// [`Feature::Bundles`]: crate::Feature::Bundles
    /// [`Feature::IncrementalBundles`]: crate::Feature::IncrementalBundles
    pub fn bundles(mut self, on: bool) -> Self {
        self.bundles = on;
        self
    }

    fn entries(&self) -> u32 {
        self.entries
            .unwrap_or_else(|| (self.count.max(1) as u32).next_power_of_two())
    }

    /// Checks the configuration without touching the kernel.
    pub fn validate(&self) -> Result<()> {
        if self.count == 0 {
            return Err(Error::config("count", "a pool needs at least one buffer"));
        }
        if self.count > sys::MAX_RING_ENTRIES as usize {
            return Err(Error::config(
                "count",
                format!("{} buffers; a ring holds at most 32768", self.count),
            ));
        }
        if self.buf_len == 0 {
            return Err(Error::config("buf_len", "buffers must not be empty"));
        }
        if self.buf_len > u32::MAX as usize {
            return Err(Error::config(
                "buf_len",
                format!(
                    "{} bytes overflows the kernel's 32-bit buffer length",
                    self.buf_len
                ),
            ));
        }
        if self.backend == Backend::Legacy && self.buf_len > i32::MAX as usize {
            return Err(Error::config(
                "buf_len",
                "legacy provided buffers are at most 2^31 - 1 bytes",
            ));
        }
        if self
            .count
            .checked_mul(self.buf_len)
            .is_none_or(|n| n > isize::MAX as usize)
        {
            return Err(Error::config(
                "buf_len",
                format!(
                    "{} buffers of {} bytes overflow the address space",
                    self.count, self.buf_len
                ),
            ));
        }
        if self.min_left != 0 && self.incremental == Incremental::Off {
            return Err(Error::config(
                "min_left",
                "only meaningful with incremental consumption",
            ));
        }
        if self.backend == Backend::Legacy && self.incremental == Incremental::Kernel {
            return Err(Error::config(
                "incremental",
                "legacy provided buffers have no kernel incremental consumption (use Emulated)",
            ));
        }
        self.ring_builder(self.incremental == Incremental::Kernel)
            .validate()?;
        let entries = self.entries();
        if (entries as usize) < self.count {
            return Err(Error::config(
                "count",
                format!(
                    "{} buffers do not fit in {entries} ring entries",
                    self.count
                ),
            ));
        }
        Ok(())
    }

    fn ring_builder(&self, kernel_inc: bool) -> crate::ring::BufRingBuilder {
        BufRing::builder(self.bgid, self.entries())
            .incremental(kernel_inc)
            .kernel_allocated(self.kernel_allocated)
            .min_left(if kernel_inc { self.min_left } else { 0 })
    }

    /// Registers the ring the configuration asks for, falling back as `Auto` settings allow.
    fn register(&self, ring: &impl AsRawFd) -> Result<(Source, Mode)> {
        let legacy = |mode| -> Result<(Source, Mode)> {
            Ok((Source::Legacy(Legacy::new(self.bgid, self.count)), mode))
        };
        let fallback_mode = match self.incremental {
            Incremental::Off => Mode::Classic,
            _ => Mode::Emulated,
        };
        if self.backend == Backend::Legacy {
            return legacy(fallback_mode);
        }
        let mut want_kernel = matches!(self.incremental, Incremental::Kernel | Incremental::Auto);
        if self.bundles {
            let probe = crate::probe::bundle_support();
            if !probe.bundles {
                return Err(Error::Unsupported {
                    feature: Feature::Bundles,
                });
            }
            if want_kernel && !probe.incremental_bundles {
                if self.incremental == Incremental::Kernel {
                    return Err(Error::Unsupported {
                        feature: Feature::IncrementalBundles,
                    });
                }
                want_kernel = false;
            }
        }
        let classic = || self.ring_builder(false).register(ring);
        let registered = if want_kernel {
            match self.ring_builder(true).register(ring) {
                Ok(r) => Ok((r, Mode::Kernel)),
                Err(Error::Unsupported {
                    feature: Feature::Incremental | Feature::MinLeft,
                }) if self.incremental == Incremental::Auto => {
                    classic().map(|r| (r, Mode::Emulated))
                }
                Err(e) => Err(e),
            }
        } else {
            classic().map(|r| (r, fallback_mode))
        };
        match registered {
            Ok((r, mode)) => Ok((Source::Ring(r), mode)),
            Err(e)
                if self.backend == Backend::Auto
                    && self.incremental != Incremental::Kernel
                    && rings_missing(&e) =>
            {
                legacy(fallback_mode)
            }
            Err(e) => Err(e),
        }
    }

    /// Allocates the buffers, registers the ring on the io_uring behind `ring` and posts every
    /// buffer. With legacy provided buffers nothing is registered: the buffers wait for
    /// [`Pool::provide`].
    pub fn build(self, ring: &impl AsRawFd) -> Result<Pool> {
        self.validate()?;
        let region = Mmap::anonymous(self.count * self.buf_len, self.huge_pages)?;
        let (source, mode) = self.register(ring)?;
        Ok(self.build_on(region, source, mode))
    }

    /// The rest of [`build`](Self::build), on a validated configuration, once the buffers and
    /// the ring (or legacy list) exist: the pool, with every buffer posted.
    fn build_on(self, region: Mmap, source: Source, mode: Mode) -> Pool {
        let buf_len = self.buf_len as u32;
        let count = self.count as u32;
        let shared = Arc::new(Shared::new(region, buf_len, count));
        // One strong count per buffer, which goes where the buffer goes (see `Shared`): chunks
        // keep the memory alive through it and need no `Arc` of their own.
        for _ in 0..count {
            std::mem::forget(Arc::clone(&shared));
        }
        let (slots, head) = match &source {
            Source::Ring(r) => (r.entries() as usize, r.tail()),
            Source::Legacy(l) => (l.mask as usize + 1, l.tail),
        };
        let mut pool = Pool {
            source,
            shared,
            mode,
            min_left: self.min_left.max(1),
            cursor: vec![0; self.count].into_boxed_slice(),
            in_kernel: vec![false; self.count].into_boxed_slice(),
            slot_pos: vec![0; self.count].into_boxed_slice(),
            slots: vec![0; slots].into_boxed_slice(),
            // Where the ring starts (0, unless a detached test ring starts elsewhere).
            head,
            pending: 0,
            stats: PoolStats {
                buffers: count,
                ..PoolStats::default()
            },
        };
        for bid in 0..count as u16 {
            pool.post(bid);
        }
        pool.publish();
        pool
    }
}

/// Whether a failed ring registration means the kernel has no buffer rings (rather than, say,
/// an fd that is not an io_uring): kernels without them answer EINVAL (an unknown register
/// opcode), so ask the probe, which tries a scratch io_uring.
fn rings_missing(e: &Error) -> bool {
    let maybe = match e {
        Error::Unsupported {
            feature: Feature::BufferRing,
        } => true,
        Error::Kernel { source, .. } => source.raw_os_error() == Some(libc::EINVAL),
        _ => false,
    };
    maybe && crate::probe::buffer_ring_missing()
}

/// Counters kept by a pool. Buffers are either in the kernel's hands (posted, or partly filled
/// on incremental rings) or in the application's (retired, with chunks alive or waiting for
/// [`Pool::publish`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers in the pool.
    pub buffers: u32,
    /// Buffers posted in the ring (including a partly filled incremental buffer). Counted when
    /// a buffer is posted: on emulated pools the rest of a part-used buffer counts before
    /// [`Pool::publish`] writes its entry, so this is exact after every publish.
    pub in_kernel: u32,
    /// Buffers retired by the kernel and not yet posted again.
    pub with_app: u32,
    /// The most buffers ever with the application at once.
    pub peak_with_app: u32,
    /// Completions accepted.
    pub completions: u64,
    /// Bytes delivered in chunks.
    pub bytes_delivered: u64,
    /// Buffers the kernel retired.
    pub buffers_retired: u64,
    /// Bytes of the buffers the kernel retired (`buffers_retired * buf_len`).
    pub bytes_retired: u64,
    /// Bytes delivered in the buffers the kernel retired (the part of `bytes_retired` that
    /// held data).
    pub bytes_used_retired: u64,
    /// Completions that ended a request with -ENOBUFS.
    pub enobufs: u64,
    /// Completions rejected as inconsistent.
    pub rejected: u64,
    /// Buffers posted again after their last chunk was dropped.
    pub reposted: u64,
    /// Tail stores that published at least one buffer.
    pub publishes: u64,
    /// Bundle completions accepted (each also counts in `completions`).
    pub bundles: u64,
    /// Rests of partly used buffers posted again by [`Incremental::Emulated`].
    pub emulated_reposts: u64,
}

impl PoolStats {
    /// Data per byte of buffer retired: how well buffer memory was used (1.0 when every
    /// retired buffer was full; 0.0 before any retirement).
    pub fn utilization(&self) -> f64 {
        if self.bytes_retired == 0 {
            0.0
        } else {
            self.bytes_used_retired as f64 / self.bytes_retired as f64
        }
    }
}

/// How buffers are consumed, once the pool is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Classic,
    Kernel,
    Emulated,
}

/// Where posted buffers go.
pub(crate) enum Source {
    Ring(BufRing),
    Legacy(Legacy),
}

/// Legacy provided buffers: what waits to be handed to the user as PROVIDE_BUFFERS SQEs.
pub(crate) struct Legacy {
    pub(crate) bgid: u16,
    /// Bids posted but not yet handed out as SQEs (capacity `count`, never reallocated).
    pub(crate) staged: Vec<u16>,
    /// Entries the kernel may hold: handed out as SQEs and not yet seen in a completion.
    pub(crate) provided: u32,
    /// Position of the next buffer handed out: the kernel's list is first in, first out, so
    /// positions give its order, as ring positions do (bundles take buffers in that order).
    pub(crate) tail: u16,
    /// `slots.len() - 1`.
    pub(crate) mask: u16,
}

impl Legacy {
    fn new(bgid: u16, count: usize) -> Self {
        Legacy {
            bgid,
            staged: Vec::with_capacity(count),
            provided: 0,
            tail: 0,
            mask: (count.next_power_of_two() - 1) as u16,
        }
    }
}

/// What a completion did to one buffer: the chunk's place, and whether the buffer stays with
/// the kernel afterwards.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Piece {
    pub(crate) bid: u16,
    pub(crate) offset: u32,
    pub(crate) len: u32,
    /// Bytes of the buffer the kernel consumed (more than `len` for file reads into kernel
    /// incremental rings, which commit the selected length).
    pub(crate) consumed: u32,
}

/// Provided buffers on one buffer ring (or, on kernels without rings, a legacy buffer group):
/// the safe layer.
///
/// Build it with [`Pool::builder`], submit receives made by its SQE builders
/// ([`recv_multishot`](Self::recv_multishot) and friends), hand every CQE of those requests to
/// [`complete`](Self::complete) (or [`complete_bundle`](Self::complete_bundle) for bundle
/// receives), and call [`publish`](Self::publish) once per batch of CQEs. A legacy pool also
/// needs [`provide`](Self::provide) after `publish` (it does nothing on rings).
///
/// # Safety contract for in-flight requests
/// As with any buffer given to io_uring, the kernel may write into the pool's buffers while a
/// request that selects from it is in flight. Keep the pool alive until every such request has
/// completed for good (a CQE without F_MORE) or been cancelled. Pushing the SQE is where you
/// vouch for that (`SubmissionQueue::push` is `unsafe`). Chunks themselves need no care: their
/// memory stays valid while they live, even after the pool is dropped.
pub struct Pool {
    // Field order is drop order: the ring is unregistered before the buffer memory can go.
    pub(crate) source: Source,
    pub(crate) shared: Arc<Shared>,
    pub(crate) mode: Mode,
    /// Emulated incremental consumption posts the rest of a buffer while this much remains.
    pub(crate) min_left: u32,
    /// Per bid: where the kernel's entry for the buffer starts, i.e. where the next byte lands
    /// (0 for classic pools).
    pub(crate) cursor: Box<[u32]>,
    /// Per bid: whether the kernel holds the buffer (posted, or partly filled).
    pub(crate) in_kernel: Box<[bool]>,
    /// Per bid: the ring position (unwrapped 16-bit index) of its entry, while `in_kernel`.
    pub(crate) slot_pos: Box<[u16]>,
    /// Per ring slot: the bid last written there. Our copy of the ring order, for bundles.
    pub(crate) slots: Box<[u16]>,
    /// The lowest ring position the kernel may still select, as far as completions tell.
    pub(crate) head: u16,
    /// Entries added since the last tail store.
    pub(crate) pending: u16,
    pub(crate) stats: PoolStats,
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
        // Give up the strong counts of the buffers the pool holds (see `Shared`): those
        // returned but not re-posted, and, dropping the kernel's reference, those the kernel
        // holds (a buffer that still has chunks passes its count to its last chunk). Buffers
        // with the application drop theirs when their last reference goes: the stack is closed.
        // The pool's own `Arc` keeps the memory until the ring is unregistered (field order).
        let ptr = Arc::as_ptr(&self.shared);
        // SAFETY: the count of each bid on the stack is the pool's now, and the pool's own
        // `Arc` keeps the count above zero here.
        self.shared
            .close(|_| unsafe { Arc::decrement_strong_count(ptr) });
        for (bid, held) in self.in_kernel.iter().enumerate() {
            if *held {
                // SAFETY: `ptr` is the `Arc`'s pointer, the kernel's reference to `bid` is the
                // pool's to give up, and the pool's own `Arc` outlives the call.
                unsafe { Shared::release(ptr, bid as u16) };
            }
        }
        if let Source::Legacy(l) = &self.source {
            if l.provided > 0 {
                // The kernel may still hold some buffers (there is no way to take them back
                // without the user's ring): keep the memory mapped for good rather than let the
                // kernel write into freed memory. `remove_buffers` avoids this.
                std::mem::forget(Arc::clone(&self.shared));
            }
        }
    }
}

impl Pool {
    /// Starts configuring a pool for buffer group `bgid`.
    pub fn builder(bgid: u16) -> PoolBuilder {
        PoolBuilder {
            bgid,
            count: 64,
            buf_len: 64 * 1024,
            entries: None,
            incremental: Incremental::Off,
            backend: Backend::Auto,
            kernel_allocated: false,
            min_left: 0,
            huge_pages: HugePages::Off,
            bundles: false,
        }
    }

    /// The buffer group id that receives name in their SQEs.
    pub fn bgid(&self) -> u16 {
        match &self.source {
            Source::Ring(r) => r.bgid(),
            Source::Legacy(l) => l.bgid,
        }
    }

    /// Number of buffers.
    pub fn count(&self) -> u32 {
        self.cursor.len() as u32
    }

    /// Length of each buffer.
    pub fn buf_len(&self) -> u32 {
        self.shared.buf_len
    }

    /// Whether buffers are consumed a piece at a time (by the kernel or emulated): chunks then
    /// may not be [last](Chunk::is_last) in their buffer.
    pub fn is_incremental(&self) -> bool {
        self.mode != Mode::Classic
    }

    /// The incremental consumption the pool got: [`Incremental::Off`], [`Incremental::Kernel`]
    /// or [`Incremental::Emulated`] (never `Auto`).
    pub fn incremental(&self) -> Incremental {
        match self.mode {
            Mode::Classic => Incremental::Off,
            Mode::Kernel => Incremental::Kernel,
            Mode::Emulated => Incremental::Emulated,
        }
    }

    /// The backend the pool got: [`Backend::Ring`] or [`Backend::Legacy`] (never `Auto`).
    pub fn backend(&self) -> Backend {
        match self.source {
            Source::Ring(_) => Backend::Ring,
            Source::Legacy(_) => Backend::Legacy,
        }
    }

    /// The ring underneath (head, available, entries), or `None` for a legacy pool
    /// ([`Backend::Legacy`]), which has no ring.
    pub fn ring(&self) -> Option<&BufRing> {
        match &self.source {
            Source::Ring(r) => Some(r),
            Source::Legacy(_) => None,
        }
    }

    /// The counters.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            // Derived here rather than counted per completion (hot path).
            bytes_retired: self.stats.buffers_retired * u64::from(self.shared.buf_len),
            ..self.stats
        }
    }

    /// Where the next byte lands in buffer `bid` (0 unless it is partly filled).
    pub fn cursor(&self, bid: u16) -> Option<u32> {
        self.cursor.get(bid as usize).copied()
    }

    /// Live references to buffer `bid`: its chunks, plus one while the kernel holds it.
    pub fn refs(&self, bid: u16) -> Option<u32> {
        ((bid as usize) < self.cursor.len()).then(|| self.shared.refs(bid))
    }

    /// The pool's copy of the kernel's ring head: every ring position below it has been
    /// consumed by the kernel, as completions seen so far prove (CQEs of different requests may
    /// arrive out of ring order, so the kernel's head can be ahead). Equals the kernel's head
    /// ([`BufRing::head`]) once every completion has been handed over. On legacy pools,
    /// positions count the buffers handed to the kernel's first-in-first-out list.
    pub fn shadow_head(&self) -> u16 {
        self.head
    }

    /// The bid whose entry sits at ring position `pos` (mask applied), as the pool wrote it
    /// (on legacy pools: the bid handed out `pos`-th).
    pub fn shadow_slot(&self, pos: u16) -> u16 {
        self.slots[(pos & self.order().1) as usize]
    }

    /// The published tail and the position mask of the ring, or of the legacy list.
    pub(crate) fn order(&self) -> (u16, u16) {
        match &self.source {
            Source::Ring(r) => (r.tail(), r.mask()),
            Source::Legacy(l) => (l.tail, l.mask),
        }
    }

    /// Hands buffer `bid`, whole, to the kernel: the kernel's reference starts now.
    #[inline]
    fn post(&mut self, bid: u16) {
        self.shared.hold(bid);
        self.stats.in_kernel += 1;
        self.post_entry(bid, 0);
    }

    /// Writes an entry for the part of buffer `bid` from `offset` on at the next free slot
    /// (not yet published), and remembers where it went. The caller has given the kernel its
    /// reference.
    #[inline]
    pub(crate) fn post_entry(&mut self, bid: u16, offset: u32) {
        let i = bid as usize;
        self.cursor[i] = offset;
        self.in_kernel[i] = true;
        let pending = self.pending;
        match &mut self.source {
            Source::Ring(ring) => {
                let pos = ring.tail().wrapping_add(pending);
                self.slot_pos[i] = pos;
                self.slots[(pos & ring.mask()) as usize] = bid;
                // SAFETY: `offset < buf_len`, so the range lies in buffer `bid` of our region,
                // which outlives the registration (the ring is dropped first); no chunk covers
                // `offset..` (the buffer is new, was released, or its chunks end at `offset`);
                // and each buffer has at most one entry in the ring, `count <= entries`, so
                // the slot is free.
                unsafe {
                    ring.add(
                        self.shared.buf_addr(bid) as u64 + u64::from(offset),
                        self.shared.buf_len - offset,
                        bid,
                        pending,
                    );
                }
                self.pending += 1;
            }
            Source::Legacy(l) => l.staged.push(bid),
        }
    }

    /// Posts every buffer whose last chunk has been dropped, then publishes them all with one
    /// tail store. Returns how many entries went to the kernel (returned buffers, and the rests
    /// that emulated incremental consumption posted). Call it once per batch of completions
    /// (like liburing's `io_uring_buf_ring_cq_advance`), and before re-arming after
    /// [`Completion::NoBuffers`]. On a legacy pool the entries wait for [`provide`](Self::provide).
    #[inline]
    pub fn publish(&mut self) -> u32 {
        if self.shared.has_returns() {
            let shared = Arc::clone(&self.shared);
            shared.drain_returns(|bid| {
                self.post(bid);
                self.stats.with_app -= 1;
                self.stats.reposted += 1;
            });
        }
        match &mut self.source {
            Source::Ring(ring) => {
                let n = self.pending;
                if n > 0 {
                    ring.advance(n);
                    self.pending = 0;
                    self.stats.publishes += 1;
                }
                u32::from(n)
            }
            Source::Legacy(l) => l.staged.len() as u32,
        }
    }

    /// Checks a CQE of a request that selected from this pool and turns it into a
    /// [`Completion`]. A CQE that cannot be right (bid out of range or not held by the kernel,
    /// more bytes than the buffer has left, F_BUF_MORE on a pool without kernel incremental
    /// consumption, data without a buffer) is rejected with [`Error::BadCompletion`] and
    /// changes nothing.
    ///
    /// For bundle receives use [`complete_bundle`](Self::complete_bundle); for reads of regular
    /// files, [`complete_file_read`](Self::complete_file_read).
    #[inline]
    pub fn complete(&mut self, result: i32, flags: u32) -> Result<Completion> {
        self.complete_one(result, flags, None)
    }

    /// [`complete`](Self::complete) for an `io_uring::cqueue::Entry`.
    pub fn complete_cqe(&mut self, cqe: &io_uring::cqueue::Entry) -> Result<Completion> {
        self.complete(cqe.result(), cqe.flags())
    }

    /// [`complete`](Self::complete) for a read of a regular file (or any read that is not
    /// pollable) made by [`read`](Self::read) with length `len` (the same value).
    ///
    /// On kernel incremental rings such a read commits the *selected* length when it selects
    /// the buffer, not the bytes read: a short read, or a read at end of file (result 0, with
    /// F_BUF_MORE), still uses `min(len, space left)` bytes of the buffer. The pool's cursor
    /// follows that, so the next read lands where the kernel puts it. Keep one such read in
    /// flight per pool at a time (the kernel selects in submission order, but completions may
    /// come back in another order).
    pub fn complete_file_read(&mut self, result: i32, flags: u32, len: u32) -> Result<Completion> {
        self.complete_one(result, flags, Some(len))
    }

    /// The completion of one buffer; `selected` is the length a file read asked for.
    #[inline]
    fn complete_one(
        &mut self,
        result: i32,
        flags: u32,
        selected: Option<u32>,
    ) -> Result<Completion> {
        let f = CqeFlags(flags);
        let Some(bid) = f.buffer() else {
            return self.no_buffer(result);
        };
        let i = self.check_bid(bid, f)?;
        let offset = self.cursor[i];
        let space = self.shared.buf_len - offset;
        let len = result.max(0) as u32;
        // What the kernel consumed from the entry: the bytes, or for file reads into kernel
        // incremental rings, the selected length.
        let consumed = match selected {
            Some(sel) if self.mode == Mode::Kernel => {
                if sel == 0 || sel > space {
                    space
                } else {
                    sel
                }
            }
            _ => len,
        };
        if len > space || len > consumed {
            return self.reject(BadCompletion::TooLong {
                bid,
                res: result,
                space: consumed.min(space),
            });
        }
        if f.buf_more() && consumed == space && space > 0 {
            return self.reject(BadCompletion::BufMoreWithoutSpace { bid });
        }
        // Accepted: from here on the CQE is the truth about buffer `bid`.
        self.stats.completions += 1;
        self.stats.bytes_delivered += u64::from(len);
        let piece = Piece {
            bid,
            offset,
            len,
            consumed,
        };
        let last = self.settle(piece, true, f.buf_more());
        if len == 0 {
            // Nothing to hand out: a retired buffer loses the kernel's reference and goes back
            // at the next publish.
            if last {
                // SAFETY: the `Arc`'s pointer; we give up the kernel's reference and our own
                // `Arc` keeps the `Shared` alive.
                unsafe { Shared::release(Arc::as_ptr(&self.shared), bid) };
            }
            return Ok(match result {
                0 => Completion::EndOfStream,
                r => Completion::Failed(io::Error::from_raw_os_error(r.wrapping_neg())),
            });
        }
        if !last {
            // The kernel keeps its reference; the chunk takes one of its own. On retirement the
            // chunk inherits the kernel's.
            self.shared.acquire(bid);
        }
        let chunk = Chunk::new(&self.shared, bid, offset, len, last);
        Ok(Completion::Data {
            chunk,
            more: f.more(),
        })
    }

    /// A completion without a buffer.
    pub(crate) fn no_buffer<T: From<Completion>>(&mut self, result: i32) -> Result<T> {
        match result {
            0 => Ok(Completion::EndOfStream.into()),
            r if r == -libc::ENOBUFS => {
                self.stats.enobufs += 1;
                Ok(Completion::NoBuffers.into())
            }
            r if r < 0 => {
                Ok(Completion::Failed(io::Error::from_raw_os_error(r.wrapping_neg())).into())
            }
            r => self.reject(BadCompletion::DataWithoutBuffer { res: r }),
        }
    }

    /// Checks that `bid` is ours and held by the kernel, and that F_BUF_MORE fits the mode.
    pub(crate) fn check_bid(&mut self, bid: u16, f: CqeFlags) -> Result<usize> {
        let i = bid as usize;
        if i >= self.cursor.len() {
            return self.reject(BadCompletion::BidOutOfRange {
                bid,
                count: self.cursor.len() as u16,
            });
        }
        // Held, and its entry published: positions from the tail back, at most one per buffer.
        let ahead = self.order().0.wrapping_sub(self.slot_pos[i]);
        if !self.in_kernel[i] || ahead == 0 || ahead as usize > self.cursor.len() {
            return self.reject(BadCompletion::BidNotHeldByKernel { bid });
        }
        if f.buf_more() && self.mode != Mode::Kernel {
            return self.reject(BadCompletion::BufMoreOnClassicPool { bid });
        }
        Ok(i)
    }

    /// Applies an accepted completion to one buffer: moves the cursor, updates the shadow head,
    /// posts the rest (emulation) or retires the buffer. `final_piece` says whether this is the
    /// last buffer the completion touched (F_BUF_MORE applies to it alone). Returns whether the
    /// buffer was retired (its chunk is the last one).
    #[inline]
    pub(crate) fn settle(&mut self, p: Piece, final_piece: bool, buf_more: bool) -> bool {
        let i = p.bid as usize;
        let end = p.offset + p.consumed;
        // Whether the kernel moved its head past this buffer's entry.
        let entry_done = !(final_piece && self.mode == Mode::Kernel && buf_more);
        let keep = match self.mode {
            Mode::Classic => false,
            Mode::Kernel => final_piece && buf_more,
            Mode::Emulated => self.shared.buf_len - end >= self.min_left,
        };
        let pos = self.slot_pos[i];
        let next = if entry_done { pos.wrapping_add(1) } else { pos };
        if (next.wrapping_sub(self.head) as i16) > 0 {
            self.head = next;
        }
        if let Source::Legacy(l) = &mut self.source {
            l.provided = l.provided.saturating_sub(1);
        }
        if keep {
            if self.mode == Mode::Emulated {
                self.post_entry(p.bid, end);
                self.stats.emulated_reposts += 1;
            } else {
                self.cursor[i] = end;
            }
            false
        } else {
            self.cursor[i] = 0;
            self.in_kernel[i] = false;
            self.stats.in_kernel -= 1;
            self.stats.with_app += 1;
            self.stats.peak_with_app = self.stats.peak_with_app.max(self.stats.with_app);
            self.stats.buffers_retired += 1;
            self.stats.bytes_used_retired += u64::from(p.offset + p.len);
            true
        }
    }

    pub(crate) fn reject<T>(&mut self, why: BadCompletion) -> Result<T> {
        self.stats.rejected += 1;
        Err(Error::BadCompletion(why))
    }
}

// Pools on ring memory that no kernel reads, for the kernel model (tests only).
#[cfg(feature = "model")]
mod detached;
