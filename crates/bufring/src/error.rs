//! The one error type of the crate. Every variant says what was wrong and where: which
//! configuration field, which kernel feature, which errno during which step, which CQE field.

use std::io;

/// A kernel feature bufring can use, with the first mainline release that has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Feature {
    /// io_uring itself (`io_uring_setup`).
    IoUring,
    /// Provided buffer rings (IORING_REGISTER_PBUF_RING).
    BufferRing,
    /// Rings allocated by the kernel (IOU_PBUF_RING_MMAP).
    KernelAllocatedRing,
    /// Incremental consumption (IOU_PBUF_RING_INC).
    Incremental,
    /// `min_left` in the buffer ring registration.
    MinLeft,
    /// IORING_REGISTER_PBUF_STATUS.
    PbufStatus,
    /// Receive bundles (IORING_FEAT_RECVSEND_BUNDLE).
    Bundles,
    /// Bundles on incremental rings.
    IncrementalBundles,
    /// IORING_OP_READ_MULTISHOT.
    ReadMultishot,
    /// Explicit 2 MiB huge pages (MAP_HUGETLB) for the buffer memory.
    HugePages,
    /// An eventfd registered with the driver's ring wakes a thread polling it when data
    /// arrives for a receive (what a runtime needs to drive the ring from its own loop).
    DeferredEventfd,
}

impl Feature {
    /// A short name, as `bufring probe` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Feature::IoUring => "io_uring",
            Feature::BufferRing => "buffer_ring",
            Feature::KernelAllocatedRing => "kernel_allocated_ring",
            Feature::Incremental => "incremental",
            Feature::MinLeft => "min_left",
            Feature::PbufStatus => "pbuf_status",
            Feature::Bundles => "bundles",
            Feature::IncrementalBundles => "incremental_bundles",
            Feature::ReadMultishot => "read_multishot",
            Feature::HugePages => "huge_pages",
            Feature::DeferredEventfd => "deferred_eventfd",
        }
    }

    /// The first mainline kernel that has the feature.
    pub fn since(self) -> &'static str {
        match self {
            Feature::IoUring => "Linux 5.1",
            Feature::BufferRing => "Linux 5.19",
            Feature::KernelAllocatedRing => "Linux 6.4",
            Feature::Incremental => "Linux 6.12",
            Feature::MinLeft => "Linux 7.0 (2026; backported to some stable kernels)",
            Feature::PbufStatus => "Linux 6.8",
            Feature::Bundles => "Linux 6.10",
            Feature::IncrementalBundles => "Linux 6.15",
            Feature::ReadMultishot => "Linux 6.7",
            Feature::HugePages => "any kernel with huge pages reserved (vm.nr_hugepages)",
            Feature::DeferredEventfd => {
                "Linux 6.13 or later where a trial works (6.18 has it; 6.1 and 6.12 do not)"
            }
        }
    }
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What was wrong with a completion that bufring refused to turn into data.
///
/// A rejected completion changes nothing in the pool: no buffer is lost and no slice is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadCompletion {
    /// The bid is not one of the pool's buffers.
    BidOutOfRange {
        /// The bid in the CQE.
        bid: u16,
        /// The number of buffers in the pool.
        count: u16,
    },
    /// The kernel does not hold this buffer (it was never posted, or it was already retired).
    BidNotHeldByKernel {
        /// The bid in the CQE.
        bid: u16,
    },
    /// More bytes than the space left in the buffer.
    TooLong {
        /// The bid in the CQE.
        bid: u16,
        /// The CQE's result.
        res: i32,
        /// Bytes left in the buffer from the current offset.
        space: u32,
    },
    /// F_BUF_MORE on a pool that does not consume incrementally.
    BufMoreOnClassicPool {
        /// The bid in the CQE.
        bid: u16,
    },
    /// A positive result without a buffer, on a request that selects from the pool.
    DataWithoutBuffer {
        /// The CQE's result.
        res: i32,
    },
    /// F_BUF_MORE although the completion used up the rest of the buffer.
    BufMoreWithoutSpace {
        /// The bid the flag applies to.
        bid: u16,
    },
    /// A bundle continues into a ring position whose buffer is not the one the pool posted
    /// there, or that the kernel does not hold.
    BundleOutOfOrder {
        /// The bid in the CQE (the bundle's first buffer).
        bid: u16,
        /// Which buffer of the bundle (0 is the first).
        index: u16,
        /// The bid the pool's copy of the ring has at that position.
        found: u16,
    },
    /// A bundle would need more buffers than are posted from its first buffer on.
    BundleTooLarge {
        /// The bid in the CQE.
        bid: u16,
        /// The CQE's result.
        res: i32,
        /// Bytes the buffers it could cover hold.
        space: u64,
    },
    /// A kernel incremental pool made reads of regular files (which use up the length asked
    /// for) and receives or reads of pollable files (which use up the bytes received): the CQE
    /// does not say which kind it is, so the pool cannot tell where the kernel will write
    /// next. Use one pool per kind.
    MixedFileReads,
}

impl std::fmt::Display for BadCompletion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            BadCompletion::BidOutOfRange { bid, count } => {
                write!(
                    f,
                    "bid {bid} is out of range (the pool has {count} buffers)"
                )
            }
            BadCompletion::BidNotHeldByKernel { bid } => {
                write!(f, "bid {bid} is not held by the kernel")
            }
            BadCompletion::TooLong { bid, res, space } => write!(
                f,
                "{res} bytes for bid {bid}, but only {space} bytes are left in that buffer"
            ),
            BadCompletion::BufMoreOnClassicPool { bid } => write!(
                f,
                "F_BUF_MORE for bid {bid} on a pool without incremental consumption"
            ),
            BadCompletion::DataWithoutBuffer { res } => {
                write!(f, "{res} bytes without F_BUFFER on a buffer-select request")
            }
            BadCompletion::BufMoreWithoutSpace { bid } => write!(
                f,
                "F_BUF_MORE for bid {bid}, but the completion used up the buffer"
            ),
            BadCompletion::BundleOutOfOrder { bid, index, found } => write!(
                f,
                "bundle starting at bid {bid}: buffer {index} is bid {found}, which the kernel does not hold at that ring position"
            ),
            BadCompletion::BundleTooLarge { bid, res, space } => write!(
                f,
                "bundle of {res} bytes starting at bid {bid}, but the buffers it could cover hold only {space}"
            ),
            BadCompletion::MixedFileReads => write!(
                f,
                "a kernel incremental pool made both regular-file reads and receives: use one pool per kind"
            ),
        }
    }
}

/// Everything that can go wrong in bufring.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid.
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig {
        /// The builder field at fault.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// The running kernel lacks a feature that was asked for.
    #[error("unsupported: the running kernel lacks {feature} (first in {since})", since = feature.since())]
    Unsupported {
        /// The missing feature.
        feature: Feature,
    },
    /// A system call failed; `op` says which step.
    #[error("{op} failed: {source}{hint}", hint = errno_hint(source))]
    Kernel {
        /// The step that failed (e.g. "register buffer ring (bgid 3)").
        op: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// A completion that bufring refused to turn into data.
    #[error("inconsistent completion: {0}")]
    BadCompletion(BadCompletion),
    /// A recvmsg multishot buffer whose layout does not hold together (see
    /// [`BadDatagram`](crate::BadDatagram)); the datagram is dropped, the pool is unaffected.
    #[error("malformed recvmsg completion: {0}")]
    BadDatagram(crate::recvmsg::BadDatagram),
    /// A driver handle (socket, listener, pool) that names nothing live in this driver: closed
    /// already, or from another driver.
    #[error("{what} is not open in this driver (closed already, or from another driver)")]
    NotOpen {
        /// Which kind of handle.
        what: &'static str,
    },
    /// A request that the state of its socket rules out (a send after `shutdown`, say).
    #[error("{op}: {reason}")]
    InvalidState {
        /// The request.
        op: &'static str,
        /// Why it cannot be done now.
        reason: &'static str,
    },
    /// A receive stream broke its framing rules (see [`FrameError`](crate::FrameError)).
    #[error("framing error: {0}")]
    Frame(crate::frame::FrameError),
}

fn errno_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EEXIST) => " (the bgid is already in use on this ring)",
        Some(libc::EPERM) | Some(libc::ENOMEM) => {
            " (locked memory limit? see `ulimit -l` / RLIMIT_MEMLOCK)"
        }
        Some(libc::EINVAL) => " (the kernel refused the arguments: unsupported flags or sizes?)",
        _ => "",
    }
}

impl Error {
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn kernel(op: impl Into<String>, source: io::Error) -> Self {
        Error::Kernel {
            op: op.into(),
            source,
        }
    }

    /// The errno behind a `Kernel` error, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

impl From<BadCompletion> for Error {
    fn from(b: BadCompletion) -> Self {
        Error::BadCompletion(b)
    }
}

impl From<crate::recvmsg::BadDatagram> for Error {
    fn from(b: crate::recvmsg::BadDatagram) -> Self {
        Error::BadDatagram(b)
    }
}

impl From<crate::frame::FrameError> for Error {
    fn from(e: crate::frame::FrameError) -> Self {
        Error::Frame(e)
    }
}

/// `Result` with bufring's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
