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

/// Memory that chunks can view: a pool's mapping, or one heap buffer (a chunk copied out of a
/// pool, or bytes the application gave away, see [`Chunk::copy_from_slice`](crate::Chunk)).
#[derive(Debug)]
pub(crate) enum Region {
    Map(Mmap),
    /// A vector, kept as its raw parts so that pointers derived from it stay valid while the
    /// region moves (a `Vec` asserts uniqueness when moved).
    Heap {
        ptr: NonNull<u8>,
        len: usize,
        cap: usize,
    },
}

// SAFETY: plain memory owned by this value, like `Mmap`.
unsafe impl Send for Region {}
// SAFETY: as above; `Region` hands out only raw pointers.
unsafe impl Sync for Region {}

impl From<Mmap> for Region {
    fn from(m: Mmap) -> Self {
        Region::Map(m)
    }
}

impl Region {
    pub(crate) fn heap(bytes: Vec<u8>) -> Self {
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        let (len, cap) = (bytes.len(), bytes.capacity());
        let ptr = NonNull::new(bytes.as_mut_ptr()).expect("Vec's pointer is never null");
        Region::Heap { ptr, len, cap }
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        match self {
            Region::Map(m) => m.as_ptr(),
            Region::Heap { ptr, .. } => ptr.as_ptr(),
        }
    }

    /// The mapping, for a pool's region (`None` on the heap).
    pub(crate) fn mapping(&self) -> Option<&Mmap> {
        match self {
            Region::Map(m) => Some(m),
            Region::Heap { .. } => None,
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Region::Heap { ptr, len, cap } = *self {
            // SAFETY: these are the raw parts of the vector `heap` took apart (never dropped
            // there), and only this drop puts them back together.
            drop(unsafe { Vec::from_raw_parts(ptr.as_ptr(), len, cap) });
        }
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
