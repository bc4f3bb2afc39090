//! SQE builders for receives that select their buffer from a pool: each sets
//! IOSQE_BUFFER_SELECT and the pool's bgid, so the kernel picks a buffer only when data comes.
//! Each also records what it built (bundles, regular-file reads), which decides how the pool
//! reads the completions.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use io_uring::{opcode, squeue, types};

use super::{Backend, Incremental, Pool};

/// The file a request reads from: a plain fd or a registered (fixed) file index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A file descriptor.
    Fd(RawFd),
    /// An index in the io_uring's registered file table.
    Fixed(u32),
}

impl From<RawFd> for Target {
    fn from(fd: RawFd) -> Self {
        Target::Fd(fd)
    }
}

impl From<types::Fd> for Target {
    fn from(fd: types::Fd) -> Self {
        Target::Fd(fd.0)
    }
}

impl From<types::Fixed> for Target {
    fn from(fd: types::Fixed) -> Self {
        Target::Fixed(fd.0)
    }
}

/// Builds an opcode for either kind of target (the io-uring crate's fd trait is sealed).
macro_rules! with_target {
    ($target:expr, |$fd:ident| $build:expr) => {
        match $target {
            Target::Fd(raw) => {
                let $fd = types::Fd(raw);
                $build
            }
            Target::Fixed(idx) => {
                let $fd = types::Fixed(idx);
                $build
            }
        }
    };
}

impl Pool {
    /// A single receive (IORING_OP_RECV) into one buffer of the pool. On incremental pools the
    /// kernel takes what is left of the current buffer.
    #[must_use = "an SQE does nothing until it is pushed"]
    pub fn recv(&self, fd: impl Into<Target>) -> squeue::Entry {
        self.built_stream();
        let bgid = self.bgid();
        with_target!(fd.into(), |fd| opcode::Recv::new(
            fd,
            std::ptr::null_mut(),
            0
        )
        .buf_group(bgid)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT))
    }

    /// A multishot receive: one CQE per arrival, each in a buffer of the pool, until an error,
    /// end of stream, or [`Completion::NoBuffers`](crate::Completion::NoBuffers).
    #[must_use = "an SQE does nothing until it is pushed"]
    pub fn recv_multishot(&self, fd: impl Into<Target>) -> squeue::Entry {
        self.built_stream();
        let bgid = self.bgid();
        with_target!(fd.into(), |fd| opcode::RecvMulti::new(fd, bgid).build())
    }

    /// A multishot receive that the kernel ends (a completion without F_MORE) once `limit`
    /// bytes have arrived: sqe->optlen, Linux 6.17. A byte budget, where a cancel would race
    /// with a burst of completions. Older kernels refuse it with EINVAL.
    #[must_use = "an SQE does nothing until it is pushed"]
    pub fn recv_multishot_limit(&self, fd: impl Into<Target>, limit: u32) -> squeue::Entry {
        with_limit(self.recv_multishot(fd), limit)
    }

    /// [`recv_multishot_bundle`](Self::recv_multishot_bundle) with the byte limit of
    /// [`recv_multishot_limit`](Self::recv_multishot_limit) (6.17; a bundle completion does not
    /// go past it on 6.18).
    #[must_use = "an SQE does nothing until it is pushed"]
    pub fn recv_multishot_bundle_limit(&self, fd: impl Into<Target>, limit: u32) -> squeue::Entry {
        with_limit(self.recv_multishot_bundle(fd), limit)
    }
}

/// Sets a multishot receive's byte limit (sqe->optlen).
fn with_limit(e: squeue::Entry, limit: u32) -> squeue::Entry {
    // The io-uring crate has no setter for optlen: write the field in place.
    // SAFETY: `Entry` is a repr(C) wrapper around the 64-byte io_uring_sqe, plain old data in
    // which every bit pattern is a valid value (the kernel checks what it reads); bytes 44..48
    // are the optlen/file_index union, which a socket receive does not otherwise use.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(e) };
    raw[44..48].copy_from_slice(&limit.max(1).to_ne_bytes());
    // SAFETY: as above, any 64 bytes are a valid `Entry` value.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

impl Pool {
    /// A bundle receive (IORING_RECVSEND_BUNDLE, Linux 6.10): one completion may cover several
    /// buffers in ring order ([`Completion::Data`](crate::Completion::Data) then carries one
    /// chunk per buffer). From now on the pool accepts completions that span buffers. On
    /// kernel incremental pools it needs Linux 6.15 (see
    /// [`PoolBuilder::bundles`](crate::PoolBuilder::bundles)).
    ///
    /// On a legacy pool this is a plain [`recv`](Self::recv): the kernel fills legacy bundles
    /// in a way their CQE does not describe (a first buffer cut short by the bytes queued at
    /// the time, then the next one), so they could not be split safely.
    #[must_use = "an SQE does nothing until it is pushed"]
    pub fn recv_bundle(&self, fd: impl Into<Target>) -> squeue::Entry {
        if self.backend() == Backend::Legacy {
            return self.recv(fd);
        }
        self.built_stream();
        self.built.bundles.store(true, Ordering::Relaxed);
        let bgid = self.bgid();
        with_target!(fd.into(), |fd| opcode::RecvBundle::new(fd, bgid).build())
    }

    /// A multishot bundle receive: each CQE covers one or more buffers. The kernel ends it (no
    /// F_MORE) when a bundle used the last posted buffer, even though data came:
    /// [`Completion::must_rearm`](crate::Completion::must_rearm) then says to publish and
    /// submit it again.
    ///
    /// On a legacy pool this is a plain [`recv_multishot`](Self::recv_multishot) (see
    /// [`recv_bundle`](Self::recv_bundle)).
    #[must_use = "an SQE does nothing until it is pushed"]
    pub fn recv_multishot_bundle(&self, fd: impl Into<Target>) -> squeue::Entry {
        if self.backend() == Backend::Legacy {
            return self.recv_multishot(fd);
        }
        self.built_stream();
        self.built.bundles.store(true, Ordering::Relaxed);
        let bgid = self.bgid();
        with_target!(fd.into(), |fd| opcode::RecvMultiBundle::new(fd, bgid)
            .build())
    }

    /// A read of at most `len` bytes at file `offset` (`u64::MAX`: the current file position)
    /// into a buffer of the pool. `len` 0, or more than a buffer, means a whole buffer.
    ///
    /// An explicit `len` matters for regular files on kernel incremental pools: the kernel
    /// commits the selected length when it selects, not the bytes read, so a short read or a
    /// read at end of file still uses `min(len, space left)` bytes of the buffer. The pool
    /// follows that by itself: on a kernel incremental pool this builder looks at the file
    /// (`fstat`: a regular file or block device; a registered file counts as one) and
    /// [`complete`](Self::complete) then reads every completion of the pool as a read of the
    /// last `len` built. Keep one such read in flight per pool at a time (the kernel selects
    /// in submission order, but completions may come back in another order), and use another
    /// pool for sockets and pipes (mixing them is refused with
    /// [`BadCompletion::MixedFileReads`](crate::BadCompletion::MixedFileReads)).
    #[must_use = "an SQE does nothing until it is pushed"]
    pub fn read(&self, fd: impl Into<Target>, len: u32, offset: u64) -> squeue::Entry {
        let bgid = self.bgid();
        let len = self.clamp_len(len);
        let target = fd.into();
        if self.mode == Incremental::Kernel {
            if commits_selection(target) {
                self.built.file_read_len.store(len, Ordering::Relaxed);
            } else {
                self.built_stream();
            }
        }
        with_target!(target, |fd| opcode::Read::new(
            fd,
            std::ptr::null_mut(),
            len
        )
        .offset(offset)
        .buf_group(bgid)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT))
    }

    /// A multishot read (IORING_OP_READ_MULTISHOT, Linux 6.7) of pollable files such as pipes:
    /// one CQE per arrival, each in a buffer of the pool. `len` 0 (what to pass) takes up to a
    /// whole buffer (on incremental pools, the rest of the current one); the kernel (6.18)
    /// refuses any other `len` with EINVAL, so a nonzero `len` is passed on as is (at most a
    /// buffer) only for kernels that accept it.
    #[must_use = "an SQE does nothing until it is pushed"]
    pub fn read_multishot(&self, fd: impl Into<Target>, len: u32, offset: u64) -> squeue::Entry {
        self.built_stream();
        let bgid = self.bgid();
        let len = len.min(self.buf_len());
        with_target!(fd.into(), |fd| opcode::ReadMulti::new(fd, len, bgid)
            .offset(offset)
            .build())
    }

    /// Records a request that uses up the bytes it receives (sockets, pipes).
    #[inline]
    pub(crate) fn built_stream(&self) {
        if self.mode == Incremental::Kernel {
            self.built.streams.store(true, Ordering::Relaxed);
        }
    }

    fn clamp_len(&self, len: u32) -> u32 {
        if len == 0 || len > self.buf_len() {
            self.buf_len()
        } else {
            len
        }
    }
}

/// Whether a read of `target` commits the selected length when it selects the buffer: the file
/// is not pollable (a regular file or a block device). A registered file cannot be looked at
/// here; it counts as a regular file (the usual reason to register one).
fn commits_selection(target: Target) -> bool {
    match target {
        Target::Fd(fd) => {
            // SAFETY: `st` is plain data fstat fills in; a bad fd gives EBADF, and then the
            // read fails too.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `st` is valid for writes for the duration of the call.
            if unsafe { libc::fstat(fd, &mut st) } != 0 {
                return false;
            }
            matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFBLK)
        }
        Target::Fixed(_) => true,
    }
}
