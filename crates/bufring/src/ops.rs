//! SQE builders for receives that select their buffer from a pool: each sets
//! IOSQE_BUFFER_SELECT and the pool's bgid, so the kernel picks a buffer only when data comes.

use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};

use crate::pool::Pool;

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
    pub fn recv(&self, fd: impl Into<Target>) -> squeue::Entry {
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
    pub fn recv_multishot(&self, fd: impl Into<Target>) -> squeue::Entry {
        let bgid = self.bgid();
        with_target!(fd.into(), |fd| opcode::RecvMulti::new(fd, bgid).build())
    }

    /// A bundle receive (IORING_RECVSEND_BUNDLE, Linux 6.10): one completion may cover several
    /// buffers in ring order. Hand its CQE to [`complete_bundle`](Self::complete_bundle). On
    /// kernel incremental pools it needs Linux 6.15 (see
    /// [`PoolBuilder::bundles`](crate::PoolBuilder::bundles)).
    ///
    /// On a legacy pool this is a plain [`recv`](Self::recv): the kernel fills legacy bundles
    /// in a way their CQE does not describe (a first buffer cut short by the bytes queued at
    /// the time, then the next one), so they could not be split safely.
    pub fn recv_bundle(&self, fd: impl Into<Target>) -> squeue::Entry {
        if self.backend() == crate::Backend::Legacy {
            return self.recv(fd);
        }
        let bgid = self.bgid();
        with_target!(fd.into(), |fd| opcode::RecvBundle::new(fd, bgid).build())
    }

    /// A multishot bundle receive: each CQE covers one or more buffers; hand them to
    /// [`complete_bundle`](Self::complete_bundle). The kernel ends it (no F_MORE) when a
    /// bundle used the last posted buffer, even though data came:
    /// [`BundleCompletion::must_rearm`](crate::BundleCompletion::must_rearm) then says to
    /// publish and submit it again.
    ///
    /// On a legacy pool this is a plain [`recv_multishot`](Self::recv_multishot) (see
    /// [`recv_bundle`](Self::recv_bundle)).
    pub fn recv_multishot_bundle(&self, fd: impl Into<Target>) -> squeue::Entry {
        if self.backend() == crate::Backend::Legacy {
            return self.recv_multishot(fd);
        }
        let bgid = self.bgid();
        with_target!(fd.into(), |fd| opcode::RecvMultiBundle::new(fd, bgid)
            .build())
    }

    /// A read of at most `len` bytes at file `offset` (`u64::MAX`: the current file position)
    /// into a buffer of the pool. `len` 0, or more than a buffer, means a whole buffer.
    ///
    /// An explicit `len` matters for regular files on incremental pools: the kernel commits
    /// the selected length when it selects, not the bytes read. Hand the CQE of a regular-file
    /// read to [`complete_file_read`](Self::complete_file_read) with the same `len`.
    pub fn read(&self, fd: impl Into<Target>, len: u32, offset: u64) -> squeue::Entry {
        let bgid = self.bgid();
        let len = self.clamp_len(len);
        with_target!(fd.into(), |fd| opcode::Read::new(
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
    pub fn read_multishot(&self, fd: impl Into<Target>, len: u32, offset: u64) -> squeue::Entry {
        let bgid = self.bgid();
        let len = len.min(self.buf_len());
        with_target!(fd.into(), |fd| opcode::ReadMulti::new(fd, len, bgid)
            .offset(offset)
            .build())
    }

    fn clamp_len(&self, len: u32) -> u32 {
        if len == 0 || len > self.buf_len() {
            self.buf_len()
        } else {
            len
        }
    }
}
