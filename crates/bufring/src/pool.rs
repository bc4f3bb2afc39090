//! The pool: `count` buffers of `buf_len` bytes in one region, posted on one buffer ring.
//! It turns CQEs into chunks after checking them, keeps the cursor of each incremental buffer,
//! and re-posts a buffer once the kernel has retired it and its last chunk is gone.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::chunk::{Chunk, Shared};
use crate::completion::{Completion, CqeFlags};
use crate::error::{BadCompletion, Error, Result};
use crate::mem::{HugePages, Mmap};
use crate::ring::BufRing;
use crate::sys;

/// Whether the kernel consumes each buffer a piece at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Incremental {
    /// Classic ring: every completion takes a whole buffer (the default).
    #[default]
    Off,
    /// Kernel incremental consumption (IOU_PBUF_RING_INC, Linux 6.12); building the pool fails
    /// with [`Error::Unsupported`] on older kernels.
    Kernel,
}

/// Configuration of a [`Pool`]; made by [`Pool::builder`].
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    bgid: u16,
    count: usize,
    buf_len: usize,
    entries: Option<u32>,
    incremental: Incremental,
    kernel_allocated: bool,
    min_left: u32,
    huge_pages: HugePages,
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

    /// Let the kernel allocate the ring memory (IOU_PBUF_RING_MMAP).
    pub fn kernel_allocated(mut self, on: bool) -> Self {
        self.kernel_allocated = on;
        self
    }

    /// With incremental consumption: retire a buffer when fewer than `min_left` bytes remain.
    pub fn min_left(mut self, min_left: u32) -> Self {
        self.min_left = min_left;
        self
    }

    /// Back the buffers with huge pages.
    pub fn huge_pages(mut self, huge: HugePages) -> Self {
        self.huge_pages = huge;
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
        self.ring_builder().validate()
    }

    fn ring_builder(&self) -> crate::ring::BufRingBuilder {
        BufRing::builder(self.bgid, self.entries())
            .incremental(self.incremental == Incremental::Kernel)
            .kernel_allocated(self.kernel_allocated)
            .min_left(self.min_left)
    }

    /// Allocates the buffers, registers the ring on the io_uring behind `ring` and posts every
    /// buffer.
    pub fn build(self, ring: &impl AsRawFd) -> Result<Pool> {
        self.validate()?;
        let region = Mmap::anonymous(self.count * self.buf_len, self.huge_pages)?;
        let ring = self.ring_builder().register(ring)?;
        Ok(self.build_on(region, ring))
    }

    /// The rest of [`build`](Self::build), on a validated configuration, once the ring exists.
    fn build_on(self, region: Mmap, ring: BufRing) -> Pool {
        let buf_len = self.buf_len as u32;
        let count = self.count as u32;
        let shared = Arc::new(Shared::new(region, buf_len, count));
        let mut pool = Pool {
            ring,
            shared,
            incremental: self.incremental == Incremental::Kernel,
            cursor: vec![0; self.count].into_boxed_slice(),
            in_kernel: vec![false; self.count].into_boxed_slice(),
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

/// Counters kept by a pool. Buffers are either in the kernel's hands (posted, or partly filled
/// on incremental rings) or in the application's (retired, with chunks alive or waiting for
/// [`Pool::publish`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers in the pool.
    pub buffers: u32,
    /// Buffers posted in the ring (including a partly filled incremental buffer).
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

/// Provided buffers on one buffer ring: the safe layer.
///
/// Build it with [`Pool::builder`], submit receives made by its SQE builders
/// ([`recv_multishot`](Self::recv_multishot) and friends), hand every CQE of those requests to
/// [`complete`](Self::complete), and call [`publish`](Self::publish) once per batch of CQEs.
///
/// # Safety contract for in-flight requests
/// As with any buffer given to io_uring, the kernel may write into the pool's buffers while a
/// request that selects from it is in flight. Keep the pool alive until every such request has
/// completed for good (a CQE without F_MORE) or been cancelled. Pushing the SQE is where you
/// vouch for that (`SubmissionQueue::push` is `unsafe`). Chunks themselves need no care: their
/// memory stays valid while they live, even after the pool is dropped.
pub struct Pool {
    // Field order is drop order: the ring is unregistered before the buffer memory can go.
    ring: BufRing,
    shared: Arc<Shared>,
    incremental: bool,
    /// Per bid: where the next byte lands (incremental rings; 0 otherwise).
    cursor: Box<[u32]>,
    /// Per bid: whether the kernel holds the buffer (posted, or partly filled).
    in_kernel: Box<[bool]>,
    /// Entries added since the last tail store.
    pending: u16,
    stats: PoolStats,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("bgid", &self.bgid())
            .field("count", &self.count())
            .field("buf_len", &self.buf_len())
            .field("incremental", &self.incremental)
            .field("stats", &self.stats)
            .finish()
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
            kernel_allocated: false,
            min_left: 0,
            huge_pages: HugePages::Off,
        }
    }

    /// The buffer group id that receives name in their SQEs.
    pub fn bgid(&self) -> u16 {
        self.ring.bgid()
    }

    /// Number of buffers.
    pub fn count(&self) -> u32 {
        self.cursor.len() as u32
    }

    /// Length of each buffer.
    pub fn buf_len(&self) -> u32 {
        self.shared.buf_len
    }

    /// Whether the kernel consumes buffers incrementally.
    pub fn is_incremental(&self) -> bool {
        self.incremental
    }

    /// The ring underneath (head, available, entries).
    pub fn ring(&self) -> &BufRing {
        &self.ring
    }

    /// The counters.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Where the next byte lands in buffer `bid` (0 unless it is partly filled).
    pub fn cursor(&self, bid: u16) -> Option<u32> {
        self.cursor.get(bid as usize).copied()
    }

    /// Live references to buffer `bid`: its chunks, plus one while the kernel holds it.
    pub fn refs(&self, bid: u16) -> Option<u32> {
        ((bid as usize) < self.cursor.len()).then(|| self.shared.refs(bid))
    }

    /// Writes buffer `bid` into the ring, whole, at the next free slot (not yet published).
    fn post(&mut self, bid: u16) {
        let addr = self.shared.buf_addr(bid) as u64;
        self.shared.hold(bid);
        self.cursor[bid as usize] = 0;
        self.in_kernel[bid as usize] = true;
        let pending = self.pending;
        // SAFETY: the buffer lies in our region, which outlives the registration (the ring is
        // dropped first, see `Drop`); nobody references it (its count was 0 or it is new); and at
        // most `count <= entries` buffers are ever in the ring, so the slot is free.
        unsafe {
            self.ring.add(addr, self.shared.buf_len, bid, pending);
        }
        self.pending += 1;
    }

    /// Posts every buffer whose last chunk has been dropped, then publishes them all with one
    /// tail store. Returns how many went back. Call it once per batch of completions (like
    /// liburing's `io_uring_buf_ring_cq_advance`), and before re-arming after
    /// [`Completion::NoBuffers`].
    pub fn publish(&mut self) -> u32 {
        if self.shared.has_returns() {
            let shared = Arc::clone(&self.shared);
            shared.drain_returns(|bid| {
                self.post(bid);
                self.stats.with_app -= 1;
                self.stats.reposted += 1;
            });
        }
        let n = self.pending;
        if n > 0 {
            self.ring.advance(n);
            self.stats.in_kernel += u32::from(n);
            self.pending = 0;
            self.stats.publishes += 1;
        }
        u32::from(n)
    }

    /// Checks a CQE of a request that selected from this pool and turns it into a
    /// [`Completion`]. A CQE that cannot be right (bid out of range or not held by the kernel,
    /// more bytes than the buffer has left, F_BUF_MORE on a classic pool, data without a
    /// buffer) is rejected with [`Error::BadCompletion`] and changes nothing.
    pub fn complete(&mut self, result: i32, flags: u32) -> Result<Completion> {
        let f = CqeFlags(flags);
        let Some(bid) = f.buffer() else {
            return match result {
                0 => Ok(Completion::EndOfStream),
                r if r == -libc::ENOBUFS => {
                    self.stats.enobufs += 1;
                    Ok(Completion::NoBuffers)
                }
                r if r < 0 => Ok(Completion::Failed(io::Error::from_raw_os_error(
                    r.wrapping_neg(),
                ))),
                r => self.reject(BadCompletion::DataWithoutBuffer { res: r }),
            };
        };
        let i = bid as usize;
        if i >= self.cursor.len() {
            return self.reject(BadCompletion::BidOutOfRange {
                bid,
                count: self.cursor.len() as u16,
            });
        }
        if !self.in_kernel[i] {
            return self.reject(BadCompletion::BidNotHeldByKernel { bid });
        }
        if f.buf_more() && !self.incremental {
            return self.reject(BadCompletion::BufMoreOnClassicPool { bid });
        }
        let offset = self.cursor[i];
        let space = self.shared.buf_len - offset;
        let len = result.max(0) as u32;
        if result > 0 && len > space {
            return self.reject(BadCompletion::TooLong {
                bid,
                res: result,
                space,
            });
        }
        // Accepted: from here on the CQE is the truth about buffer `bid`.
        self.stats.completions += 1;
        self.stats.bytes_delivered += u64::from(len);
        let retired = !f.buf_more();
        if retired {
            self.cursor[i] = 0;
            self.in_kernel[i] = false;
            self.stats.in_kernel -= 1;
            self.stats.with_app += 1;
            self.stats.peak_with_app = self.stats.peak_with_app.max(self.stats.with_app);
            self.stats.buffers_retired += 1;
            self.stats.bytes_retired += u64::from(self.shared.buf_len);
            self.stats.bytes_used_retired += u64::from(offset + len);
        } else {
            self.cursor[i] = offset + len;
        }
        if len == 0 {
            // Nothing to hand out: a retired buffer loses the kernel's reference and goes back
            // at the next publish.
            if retired {
                self.shared.release(bid);
            }
            return Ok(match result {
                0 => Completion::EndOfStream,
                r => Completion::Failed(io::Error::from_raw_os_error(r.wrapping_neg())),
            });
        }
        if !retired {
            // The kernel keeps its reference; the chunk takes one of its own. On retirement the
            // chunk inherits the kernel's.
            self.shared.acquire(bid);
        }
        let chunk = Chunk::new(Arc::clone(&self.shared), bid, offset, len, retired);
        Ok(Completion::Data {
            chunk,
            more: f.more(),
        })
    }

    /// [`complete`](Self::complete) for an `io_uring::cqueue::Entry`.
    pub fn complete_cqe(&mut self, cqe: &io_uring::cqueue::Entry) -> Result<Completion> {
        self.complete(cqe.result(), cqe.flags())
    }

    fn reject<T>(&mut self, why: BadCompletion) -> Result<T> {
        self.stats.rejected += 1;
        Err(Error::BadCompletion(why))
    }
}

// Pools on ring memory that no kernel reads, for the kernel model (tests only).
#[cfg(feature = "model")]
mod detached;
