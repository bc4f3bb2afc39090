//! Memory mappings: the buffer region, and the ring memory (ours or the kernel's). Each
//! mapping is unmapped exactly once, when its owner drops it.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use crate::error::{Error, Feature, Result};

/// How the buffer memory is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HugePages {
    /// Ordinary 4 KiB pages (the default).
    #[default]
    Off,
    /// Ask for transparent huge pages with `madvise(MADV_HUGEPAGE)`; the kernel may ignore it.
    Transparent,
    /// Explicit 2 MiB pages (`MAP_HUGETLB`); fails with [`Error::Unsupported`] when none are
    /// reserved (`vm.nr_hugepages`).
    Explicit,
}

const HUGE_2M: usize = 2 << 20;

/// An owned `mmap` region, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; access is synchronised by its users.
unsafe impl Send for Mmap {}
// SAFETY: as above; `Mmap` itself hands out only raw pointers.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// Anonymous private memory, page aligned, not populated (pages are committed on first
    /// touch, so an idle pool costs address space, not RAM).
    pub(crate) fn anonymous(len: usize, huge: HugePages) -> Result<Self> {
        let (len, extra) = match huge {
            HugePages::Explicit => (
                len.checked_next_multiple_of(HUGE_2M)
                    .ok_or_else(|| Error::config("buf_len", "pool size overflows"))?,
                libc::MAP_HUGETLB | (21 << libc::MAP_HUGE_SHIFT),
            ),
            _ => (len, 0),
        };
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            if huge == HugePages::Explicit {
                return Err(Error::Unsupported {
                    feature: Feature::HugePages,
                });
            }
            return Err(Error::kernel(format!("mmap of {len} bytes"), e));
        }
        if huge == HugePages::Transparent {
            // SAFETY: `ptr..ptr+len` is the mapping made above. A refusal is not an error: THP is
            // a hint.
            unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) };
        }
        Ok(Mmap {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
        })
    }

    /// Maps `len` bytes of the io_uring fd at `offset` (a kernel-allocated buffer ring).
    pub(crate) fn ring_fd(fd: RawFd, len: usize, offset: u64) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping of the kernel's ring object; no existing memory is
        // touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmap {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr+len` is a mapping this value made and nobody else unmaps.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}
