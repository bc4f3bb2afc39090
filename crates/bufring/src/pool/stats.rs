//! Counters: the pool's own ([`PoolStats`]), and the process-wide record of memory bufring
//! had to leak because the kernel might still write into it ([`leaks`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters kept by a pool. Buffers are either in the kernel's hands (posted, or partly filled
/// on incremental rings) or in the application's (retired, with chunks alive or waiting for
/// [`Pool::publish`](crate::Pool::publish)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers in the pool.
    pub buffers: u32,
    /// Buffers the kernel holds: posted in the ring, or partly filled on incremental pools
    /// (`buffers - with_app`; on emulated pools the rest of a part-used buffer counts before
    /// [`Pool::publish`](crate::Pool::publish) writes its entry, so this is exact after every
    /// publish).
    pub in_kernel: u32,
    /// Buffers retired by the kernel and not yet posted again or parked (their chunks may be
    /// gone, and the buffers waiting for the next publish).
    pub with_app: u32,
    /// Buffers back from the application that the pool keeps out of the ring because the
    /// kernel already holds [`posted_target`](Self::posted_target) (see
    /// [`Pool::set_posted_target`](crate::Pool::set_posted_target)).
    pub parked: u32,
    /// How many buffers the pool keeps posted.
    pub posted_target: u32,
    /// Bytes of parked buffers whose pages were given back to the system
    /// ([`Pool::trim_idle`](crate::Pool::trim_idle)).
    pub trimmed_bytes: u64,
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
    /// Rests of partly used buffers posted again by [`Incremental::Emulated`](crate::Incremental::Emulated).
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

/// Memory bufring kept mapped for good because the kernel might still write into it.
///
/// It happens when unregistering a buffer ring fails (for example a pool dropped on another
/// thread than the one that owns an `IORING_SETUP_SINGLE_ISSUER` ring: the kernel answers
/// EEXIST and keeps the ring registered), or when a legacy pool is dropped while the kernel may
/// hold some of its buffers. Freeing such memory would let the kernel write into whatever is
/// mapped there next; bufring leaks it instead and counts it here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leaks {
    /// Pools and rings whose memory was leaked.
    pub pools: u64,
    /// Bytes leaked (buffers and ring memory).
    pub bytes: u64,
}

static LEAKED_POOLS: AtomicU64 = AtomicU64::new(0);
static LEAKED_BYTES: AtomicU64 = AtomicU64::new(0);

/// What this process leaked so far rather than free memory the kernel might write into
/// (see [`Leaks`]). A healthy program keeps it at zero.
pub fn leaks() -> Leaks {
    Leaks {
        pools: LEAKED_POOLS.load(Ordering::Relaxed),
        bytes: LEAKED_BYTES.load(Ordering::Relaxed),
    }
}

pub(crate) fn record_leak(bytes: usize) {
    LEAKED_POOLS.fetch_add(1, Ordering::Relaxed);
    LEAKED_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}
