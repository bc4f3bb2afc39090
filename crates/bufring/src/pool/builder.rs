//! Configuration of a pool ([`PoolBuilder`]): validation without the kernel, registration
//! with the fallbacks `Auto` settings allow, and the new pool with every buffer posted.

use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::ledger::Ledger;
use super::legacy::Legacy;
use super::{Feed, Pool, PoolStats};
use crate::chunk::Shared;
use crate::error::{Error, Feature, Result};
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
    pub(super) bgid: u16,
    pub(super) count: usize,
    pub(super) buf_len: usize,
    pub(super) entries: Option<u32>,
    pub(super) incremental: Incremental,
    pub(super) backend: Backend,
    pub(super) kernel_allocated: bool,
    pub(super) min_left: u32,
    pub(super) huge_pages: HugePages,
    pub(super) bundles: bool,
    pub(super) posted: Option<u32>,
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

    /// How many buffers to post at the start (1 to `count`; default: all of them). The rest
    /// wait parked, their pages untouched, until
    /// [`Pool::set_posted_target`](crate::Pool::set_posted_target) asks for more.
    pub fn posted(mut self, n: u32) -> Self {
        self.posted = Some(n);
        self
    }

    /// What [`posted`](Self::posted) asked for, and the buffer count (for the driver).
    pub(crate) fn sizes(&self) -> (Option<u32>, usize, usize) {
        (self.posted, self.count, self.buf_len)
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
    /// the check: their bundle builders make plain receives. From the start, the pool reads a
    /// completion longer than its first buffer's space as a bundle (the bundle SQE builders
    /// turn that on too, when they are first called).
    ///
    /// [`Feature::Bundles`]: crate::Feature::Bundles
    /// [`Feature::IncrementalBundles`]: crate::Feature::IncrementalBundles
    pub fn bundles(mut self, on: bool) -> Self {
        self.bundles = on;
        self
    }

    pub(super) fn entries(&self) -> u32 {
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
        if let Some(n) = self.posted {
            if n == 0 || n as usize > self.count {
                return Err(Error::config(
                    "posted",
                    format!(
                        "{n} buffers posted at the start; 1 to count ({})",
                        self.count
                    ),
                ));
            }
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

    pub(super) fn ring_builder(&self, kernel_inc: bool) -> crate::ring::BufRingBuilder {
        BufRing::builder(self.bgid, self.entries())
            .incremental(kernel_inc)
            .kernel_allocated(self.kernel_allocated)
            .min_left(if kernel_inc { self.min_left } else { 0 })
    }

    /// Registers the ring the configuration asks for, falling back as `Auto` settings allow.
    fn register(&self, ring: &impl AsRawFd) -> Result<(Feed, Incremental)> {
        let legacy = |mode| -> Result<(Feed, Incremental)> {
            Ok((Feed::Legacy(Legacy::new(self.bgid, self.count)), mode))
        };
        let fallback_mode = match self.incremental {
            Incremental::Off => Incremental::Off,
            _ => Incremental::Emulated,
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
                Ok(r) => Ok((r, Incremental::Kernel)),
                Err(Error::Unsupported {
                    feature: Feature::Incremental | Feature::MinLeft,
                }) if self.incremental == Incremental::Auto => {
                    classic().map(|r| (r, Incremental::Emulated))
                }
                Err(e) => Err(e),
            }
        } else {
            classic().map(|r| (r, fallback_mode))
        };
        match registered {
            Ok((r, mode)) => Ok((Feed::Ring(r), mode)),
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
        let (feed, mode) = self.register(ring)?;
        Ok(self.build_on(region, feed, mode))
    }

    /// The rest of [`build`](Self::build), on a validated configuration, once the buffers and
    /// the ring (or legacy list) exist: the pool, with every buffer posted.
    pub(super) fn build_on(self, region: Mmap, feed: Feed, mode: Incremental) -> Pool {
        let buf_len = self.buf_len as u32;
        let count = self.count as u32;
        let shared = Arc::new(Shared::new(region, buf_len, count));
        // One strong count per buffer, which goes where the buffer goes (see `Shared`): chunks
        // keep the memory alive through it and need no `Arc` of their own.
        for _ in 0..count {
            std::mem::forget(Arc::clone(&shared));
        }
        // Where the ring starts: 0, unless a detached test ring starts elsewhere.
        let (slots, start) = (feed.mask() as usize + 1, feed.tail());
        let mut pool = Pool {
            feed,
            shared,
            ledger: Ledger::new(self.count, slots, start),
            mode,
            min_left: self.min_left.max(1),
            pending: 0,
            initial: 0,
            target: 0,
            parked: Vec::with_capacity(self.count),
            trimmed: 0,
            parked_low: 0,
            huge_pages: self.huge_pages,
            stats: PoolStats {
                buffers: count,
                ..PoolStats::default()
            },
            built: Default::default(),
        };
        if self.bundles {
            pool.built.bundles = AtomicBool::new(true);
        }
        let posted = self.posted.unwrap_or(count).clamp(1, count);
        for bid in 0..posted as u16 {
            pool.post(bid);
        }
        // The rest start parked, first bids on top; untouched, their pages cost nothing.
        pool.parked.extend((posted as u16..count as u16).rev());
        (pool.trimmed, pool.parked_low) = (pool.parked.len(), pool.parked.len());
        (pool.initial, pool.target) = (posted, posted);
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
            posted: None,
        }
    }
}
