//! A ring that is registered with no kernel: its memory is a memfd mapped twice, once for the
//! [`BufRing`] that a pool writes and once for the kernel model that reads it. Feature `model`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::{BufRing, BufRingBuilder};
use crate::error::{Error, Result};
use crate::mem::{page_size, Mmap};
use io_uring::types::BufRingEntry;

impl BufRingBuilder {
    /// Builds the ring on fresh shared memory instead of registering it, with the tail set to
    /// `start` (so tests can begin right before the 16-bit wrap). Returns the ring and a second
    /// mapping of the same memory for the model.
    pub(crate) fn detached(self, start: u16) -> Result<(BufRing, Mmap)> {
        self.validate()?;
        let len = (self.entries as usize * std::mem::size_of::<BufRingEntry>())
            .next_multiple_of(page_size());
        // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor or -1.
        let raw = unsafe { libc::memfd_create(c"bufring-model-ring".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(Error::kernel(
                "memfd_create for a detached ring",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on our own memfd has no memory effects.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(Error::kernel(
                "ftruncate of a detached ring",
                std::io::Error::last_os_error(),
            ));
        }
        let map = |what| Mmap::ring_fd(fd.as_raw_fd(), len, 0).map_err(|e| Error::kernel(what, e));
        let mem = map("mmap of a detached ring")?;
        let view = map("second mmap of a detached ring")?;
        // The memfd stands in for the io_uring fd; nothing is registered, so nothing is
        // unregistered on drop.
        let ring = BufRing {
            fd,
            mem: std::mem::ManuallyDrop::new(mem),
            registered: false,
            abandoned: false,
            entries: self.entries,
            mask: (self.entries - 1) as u16,
            tail: start,
            bgid: self.bgid,
            incremental: self.incremental,
            kernel_allocated: false,
            min_left: self.min_left,
        };
        ring.tail_atomic().store(start, Ordering::Release);
        Ok((ring, view))
    }
}
