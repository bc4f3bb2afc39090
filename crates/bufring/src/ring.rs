//! The shared buffer ring: its memory (ours or the kernel's), registration, the tail we
//! publish and the head the kernel keeps. The counterpart of liburing's `io_uring_buf_ring_*`
//! helpers, with the same arithmetic in plain sight.

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::cqueue;
use io_uring::types::BufRingEntry;

use crate::error::{Error, Feature, Result};
use crate::mem::{page_size, Mmap};
use crate::sys::{self, IoUringBufReg};

/// How to register a [`BufRing`]; made by [`BufRing::builder`].
#[derive(Debug, Clone, Copy)]
pub struct BufRingBuilder {
    bgid: u16,
    entries: u32,
    incremental: bool,
    kernel_allocated: bool,
    min_left: u32,
}

/// Whether the kernel lacks buffer rings (before 5.19), found without registering anything:
/// unregistering a group a fresh io_uring never had is ENOENT where rings exist and EINVAL (an
/// unknown register opcode) where they do not.
fn buffer_rings_missing() -> bool {
    io_uring::IoUring::new(1).is_ok_and(|ring| {
        sys::unregister_pbuf_ring(ring.as_raw_fd(), 0)
            .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL))
    })
}

/// Whether the kernel refuses incremental rings, tried without `min_left` on a scratch
/// io_uring (only asked after a registration with `min_left` failed with EINVAL).
fn incremental_missing() -> bool {
    io_uring::IoUring::new(4).is_ok_and(|ring| {
        matches!(
            BufRing::builder(0x7f0, 1).incremental(true).register(&ring),
            Err(Error::Unsupported {
                feature: Feature::Incremental
            })
        )
    })
}

impl BufRingBuilder {
    /// Incremental consumption (IOU_PBUF_RING_INC, Linux 6.12): the kernel fills a buffer a
    /// piece at a time and says F_BUF_MORE while it keeps the buffer.
    pub fn incremental(mut self, on: bool) -> Self {
        self.incremental = on;
        self
    }

    /// Let the kernel allocate the ring (IOU_PBUF_RING_MMAP, Linux 6.4); it is then mapped
    /// from the io_uring fd. The default is page-aligned anonymous memory of ours.
    pub fn kernel_allocated(mut self, on: bool) -> Self {
        self.kernel_allocated = on;
        self
    }

    /// With incremental consumption: retire a buffer once fewer than `min_left` bytes remain
    /// in it. 0 (the default) leaves the field out of the registration.
    pub fn min_left(mut self, min_left: u32) -> Self {
        self.min_left = min_left;
        self
    }

    /// Checks the configuration without touching the kernel.
    pub fn validate(&self) -> Result<()> {
        if self.entries == 0 || !self.entries.is_power_of_two() {
            return Err(Error::config(
                "ring_entries",
                format!("{} is not a power of two", self.entries),
            ));
        }
        if self.entries > sys::MAX_RING_ENTRIES {
            return Err(Error::config(
                "ring_entries",
                format!("{} is more than 32768", self.entries),
            ));
        }
        if self.kernel_allocated && self.bgid > MAX_MMAP_BGID {
            // The mmap offset has 11 bits for the bgid (IORING_OFF_MMAP_MASK is 0xf8000000):
            // the kernel registers such a ring but mmap of it fails with ENOMEM.
            return Err(Error::config(
                "bgid",
                format!(
                    "{} is above {MAX_MMAP_BGID}: a kernel-allocated ring cannot be mapped for it",
                    self.bgid
                ),
            ));
        }
        if self.min_left != 0 && !self.incremental {
            return Err(Error::config(
                "min_left",
                "only meaningful with incremental consumption",
            ));
        }
        Ok(())
    }

    /// Allocates (or maps) the ring and registers it on the io_uring behind `ring`.
    ///
    /// The ring keeps its own duplicate of the io_uring fd, so it unregisters from the right
    /// io_uring on drop even if the caller's `IoUring` is gone by then.
    pub fn register(self, ring: &impl AsRawFd) -> Result<BufRing> {
        self.validate()?;
        let fd = dup_fd(ring.as_raw_fd())?;
        let len = (self.entries as usize * std::mem::size_of::<BufRingEntry>())
            .next_multiple_of(page_size());
        let mut flags = 0;
        if self.incremental {
            flags |= io_uring::types::IOU_PBUF_RING_INC as u16;
        }
        let mem = if self.kernel_allocated {
            flags |= io_uring::types::IOU_PBUF_RING_MMAP as u16;
            None
        } else {
            Some(Mmap::anonymous(len, crate::mem::HugePages::Off)?)
        };
        let reg = IoUringBufReg {
            ring_addr: mem.as_ref().map_or(0, |m| m.as_ptr() as u64),
            ring_entries: self.entries,
            bgid: self.bgid,
            flags,
            min_left: self.min_left,
            resv: [0; 5],
        };
        // SAFETY: the ring memory `reg` names is ours (a fresh mapping of `len` bytes, page
        // aligned, for `entries` entries) or 0 for a kernel-allocated ring; the `BufRing` built
        // below owns it and unregisters before unmapping it (or leaks it).
        if let Err(e) = unsafe { sys::register_pbuf_ring(fd.as_raw_fd(), &reg) } {
            return Err(self.registration_error(e));
        }
        let mem = match mem {
            Some(m) => m,
            None => {
                let off = sys::IORING_OFF_PBUF_RING
                    | (u64::from(self.bgid) << sys::IORING_OFF_PBUF_SHIFT);
                match Mmap::ring_fd(fd.as_raw_fd(), len, off) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = sys::unregister_pbuf_ring(fd.as_raw_fd(), self.bgid);
                        return Err(Error::kernel(
                            format!("mmap of kernel-allocated ring (bgid {})", self.bgid),
                            e,
                        ));
                    }
                }
            }
        };
        let ring = BufRing {
            fd,
            mem: std::mem::ManuallyDrop::new(mem),
            registered: true,
            abandoned: false,
            entries: self.entries,
            mask: (self.entries - 1) as u16,
            tail: 0,
            bgid: self.bgid,
            incremental: self.incremental,
            kernel_allocated: self.kernel_allocated,
            min_left: self.min_left,
        };
        // Our memory is fresh and the kernel zeroes its own, but say it once: tail = 0.
        ring.tail_atomic().store(0, Ordering::Release);
        Ok(ring)
    }

    /// Turns a failed registration into the most precise error we can give.
    fn registration_error(&self, e: std::io::Error) -> Error {
        if e.raw_os_error() == Some(libc::EINVAL) {
            // Kernels before 5.19 answer the unknown register opcode with EINVAL too.
            if buffer_rings_missing() {
                return Error::Unsupported {
                    feature: Feature::BufferRing,
                };
            }
            // EINVAL is the kernel's answer to flags it does not know; name the feature.
            if self.min_left != 0 {
                // A kernel without incremental rings (before 6.12) lacks min_left too, but
                // incremental consumption is what is missing first: name that.
                let feature = if self.incremental && incremental_missing() {
                    Feature::Incremental
                } else {
                    Feature::MinLeft
                };
                return Error::Unsupported { feature };
            }
            if self.incremental {
                return Error::Unsupported {
                    feature: Feature::Incremental,
                };
            }
            if self.kernel_allocated {
                return Error::Unsupported {
                    feature: Feature::KernelAllocatedRing,
                };
            }
        }
        if matches!(
            e.raw_os_error(),
            Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
        ) {
            return Error::Unsupported {
                feature: Feature::BufferRing,
            };
        }
        Error::kernel(
            format!(
                "register buffer ring (bgid {}, {} entries)",
                self.bgid, self.entries
            ),
            e,
        )
    }
}

/// The largest bgid whose kernel-allocated ring can be mapped (11 bits of the mmap offset).
pub const MAX_MMAP_BGID: u16 = 0x7ff;

fn dup_fd(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a caller-provided fd has no memory effects; a bad fd gives EBADF.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(Error::kernel(
            "dup of the io_uring fd",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `new` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// A provided buffer ring registered on an io_uring: the memory shared with the kernel, and
/// the tail only we write. Unregistered and unmapped on drop.
///
/// Entries are written with [`add`](Self::add) (unsafe: the kernel will write where an entry
/// points) and become visible to the kernel with one [`advance`](Self::advance) per batch.
pub struct BufRing {
    fd: OwnedFd,
    /// Unmapped on drop only once the kernel let go of the ring.
    mem: std::mem::ManuallyDrop<Mmap>,
    /// Still registered with the kernel.
    registered: bool,
    /// Abandoned to the kernel: never unmapped (an owner already counted the leak).
    abandoned: bool,
    entries: u32,
    mask: u16,
    /// Our tail: entries below it are published.
    tail: u16,
    bgid: u16,
    incremental: bool,
    kernel_allocated: bool,
    min_left: u32,
}

impl fmt::Debug for BufRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufRing")
            .field("bgid", &self.bgid)
            .field("entries", &self.entries)
            .field("tail", &self.tail)
            .field("incremental", &self.incremental)
            .field("kernel_allocated", &self.kernel_allocated)
            .finish()
    }
}

impl BufRing {
    /// Starts the registration of a ring of `entries` entries (a power of two, 1 to 32768)
    /// for buffer group `bgid`.
    pub fn builder(bgid: u16, entries: u32) -> BufRingBuilder {
        BufRingBuilder {
            bgid,
            entries,
            incremental: false,
            kernel_allocated: false,
            min_left: 0,
        }
    }

    /// The buffer group id.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// The number of entries.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// `entries - 1`: the index of tail `t` is `t & mask` (liburing's `io_uring_buf_ring_mask`).
    #[inline]
    pub fn mask(&self) -> u16 {
        self.mask
    }

    /// Whether the ring consumes buffers incrementally.
    pub fn is_incremental(&self) -> bool {
        self.incremental
    }

    /// Whether the kernel allocated the ring memory.
    pub fn is_kernel_allocated(&self) -> bool {
        self.kernel_allocated
    }

    /// The `min_left` the ring was registered with (0: none).
    pub fn min_left(&self) -> u32 {
        self.min_left
    }

    /// The tail as published to the kernel.
    #[inline]
    pub fn tail(&self) -> u16 {
        self.tail
    }

    /// The io_uring fd the ring is registered on (our duplicate of it).
    pub fn ring_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    #[inline]
    fn bufs(&self) -> *mut BufRingEntry {
        self.mem.as_ptr().cast()
    }

    #[inline]
    fn tail_atomic(&self) -> &AtomicU16 {
        // SAFETY: `BufRingEntry::tail` is the address of the tail (entry 0's `resv`) inside the
        // mapping, which lives as long as `self`; the mapping is page aligned, so the u16 is
        // aligned; we and the kernel only ever access it atomically.
        unsafe { &*BufRingEntry::tail(self.bufs()).cast::<AtomicU16>() }
    }

    /// Writes entry `tail + offset` (not yet visible to the kernel): liburing's
    /// `io_uring_buf_ring_add`. Field by field, so the tail in entry 0 is never clobbered.
    ///
    /// # Safety
    /// `addr..addr+len` must be memory the kernel may write into until the buffer comes back in
    /// a completion, and the entry must be one the kernel does not own: at most
    /// `entries - available` entries may be pending.
    #[inline]
    pub unsafe fn add(&mut self, addr: u64, len: u32, bid: u16, offset: u16) {
        let idx = (self.tail.wrapping_add(offset) & self.mask) as usize;
        // SAFETY: idx < entries, so the entry is inside the mapping; the caller guarantees the
        // kernel does not own this slot. The setters write addr, len and bid only: `resv` (in
        // entry 0, the tail the kernel reads atomically) is never written through the entry.
        let e = unsafe { &mut *self.bufs().add(idx) };
        e.set_addr(addr);
        e.set_len(len);
        e.set_bid(bid);
    }

    /// Publishes `count` added entries with one release store of the tail: liburing's
    /// `io_uring_buf_ring_advance`.
    ///
    /// # Safety
    /// The `count` entries after the tail must have been written by [`add`](Self::add) since the
    /// last advance, each under `add`'s contract: publishing a slot that holds an old entry
    /// (after the ring wrapped) would give the kernel a buffer that may be in use.
    #[inline]
    pub unsafe fn advance(&mut self, count: u16) {
        self.tail = self.tail.wrapping_add(count);
        self.tail_atomic().store(self.tail, Ordering::Release);
    }

    /// Publishes `count` entries and marks the CQEs consumed so far as seen, in one place:
    /// liburing's `io_uring_buf_ring_cq_advance` for the io-uring crate's completion queue.
    ///
    /// # Safety
    /// As for [`advance`](Self::advance).
    pub unsafe fn cq_advance<E: cqueue::EntryMarker>(
        &mut self,
        cq: &mut cqueue::CompletionQueue<'_, E>,
        count: u16,
    ) {
        // SAFETY: the caller's contract is `advance`'s.
        unsafe { self.advance(count) };
        cq.sync();
    }

    /// The kernel's head, through IORING_REGISTER_PBUF_STATUS (Linux 6.8).
    pub fn head(&self) -> Result<u16> {
        sys::pbuf_status(self.fd.as_raw_fd(), self.bgid).map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                Error::Unsupported {
                    feature: Feature::PbufStatus,
                }
            } else {
                Error::kernel(format!("PBUF_STATUS (bgid {})", self.bgid), e)
            }
        })
    }

    /// Entries published and not yet consumed by the kernel: `tail - head`. Racy by nature: the
    /// kernel may consume more right after the call.
    pub fn available(&self) -> Result<u16> {
        Ok(self.tail.wrapping_sub(self.head()?))
    }

    /// Reads entry `index & mask` as it is now (the kernel rewrites addr and len of the head
    /// entry on incremental rings). For diagnostics and tests.
    pub fn entry(&self, index: u16) -> RingEntry {
        let idx = (index & self.mask) as usize;
        let e = self.bufs().wrapping_add(idx).cast::<sys::IoUringBuf>();
        // SAFETY: idx < entries, so the entry is inside the mapping; volatile reads of plain
        // integers the kernel may be writing give some value of each field, never UB.
        unsafe {
            RingEntry {
                addr: std::ptr::addr_of!((*e).addr).read_volatile(),
                len: std::ptr::addr_of!((*e).len).read_volatile(),
                bid: std::ptr::addr_of!((*e).bid).read_volatile(),
            }
        }
    }

    /// Unregisters the ring now and reports the kernel's answer. Drop does the same, and
    /// leaks the ring memory if the kernel refuses (see [`leaks`](crate::leaks)).
    pub fn unregister(mut self) -> Result<()> {
        self.unregister_in_place()
    }

    /// Gives the ring up to the kernel for good: its memory is never unmapped. Returns its size,
    /// for the owner's count of what it leaked.
    pub(crate) fn abandon(&mut self) -> usize {
        self.abandoned = true;
        self.mem.len()
    }

    /// Unregisters the ring, unless done already. On failure the ring stays registered and its
    /// memory will be leaked on drop rather than unmapped under the kernel.
    pub(crate) fn unregister_in_place(&mut self) -> Result<()> {
        if !self.registered {
            return Ok(());
        }
        sys::unregister_pbuf_ring(self.fd.as_raw_fd(), self.bgid).map_err(|e| {
            Error::kernel(format!("unregister buffer ring (bgid {})", self.bgid), e)
        })?;
        self.registered = false;
        Ok(())
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.abandoned {
            return;
        }
        // Unregister before the memory goes away, so the kernel never sees a dangling ring.
        if self.unregister_in_place().is_err() {
            // Still registered (e.g. EEXIST: dropped off the owner thread of a SINGLE_ISSUER
            // ring): the kernel may read this memory, so it stays mapped for good.
            crate::pool::record_leak(self.mem.len());
            return;
        }
        // SAFETY: dropped once, here; the kernel no longer uses the ring.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.mem) };
    }
}

/// One entry of a buffer ring as read by [`BufRing::entry`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingEntry {
    /// Where the kernel writes next in the buffer.
    pub addr: u64,
    /// Bytes left from `addr` (0 once an incremental buffer is used up).
    pub len: u32,
    /// The buffer id.
    pub bid: u16,
}

// Ring memory that no kernel reads, for the kernel model (tests only).
#[cfg(feature = "model")]
mod detached;
