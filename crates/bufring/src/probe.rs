//! What the running kernel supports, found by trying each feature on a scratch io_uring, never
//! by reading the version number (fixes and features are backported).

use io_uring::{opcode, IoUring, Probe as OpProbe};

use crate::error::{Error, Result};
use crate::ring::BufRing;

/// The kernel's answer for each feature bufring can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// Provided buffer rings (5.19).
    pub buffer_ring: bool,
    /// Kernel-allocated rings (6.4).
    pub kernel_allocated_ring: bool,
    /// Incremental consumption (6.12).
    pub incremental: bool,
    /// `min_left` on incremental rings (2026).
    pub min_left: bool,
    /// IORING_REGISTER_PBUF_STATUS (6.8).
    pub pbuf_status: bool,
    /// Receive bundles (6.10).
    pub bundles: bool,
    /// IORING_OP_READ_MULTISHOT (6.7).
    pub read_multishot: bool,
}

/// A bgid for scratch registrations on the probe's own io_uring.
const PROBE_BGID: u16 = 0x7f0;

impl Probe {
    /// Probes on a scratch io_uring of its own. Fails only if io_uring itself is unavailable
    /// (kernel too old, `kernel.io_uring_disabled`, seccomp).
    pub fn run() -> Result<Probe> {
        let ring = IoUring::new(4).map_err(|e| Error::kernel("io_uring_setup", e))?;
        Ok(Self::run_on(&ring))
    }

    /// Probes on the caller's io_uring, with scratch registrations on a bgid (0x7f0) that is
    /// unregistered again before returning.
    pub fn run_on(ring: &IoUring) -> Probe {
        let try_ring = |b: crate::ring::BufRingBuilder| b.register(ring).map(drop).is_ok();
        let buffer_ring = try_ring(BufRing::builder(PROBE_BGID, 1));
        let kernel_allocated_ring =
            buffer_ring && try_ring(BufRing::builder(PROBE_BGID, 1).kernel_allocated(true));
        let incremental =
            buffer_ring && try_ring(BufRing::builder(PROBE_BGID, 1).incremental(true));
        let min_left = incremental
            && try_ring(
                BufRing::builder(PROBE_BGID, 1)
                    .incremental(true)
                    .min_left(1),
            );
        let pbuf_status = buffer_ring && probe_pbuf_status(ring);
        let mut ops = OpProbe::new();
        let read_multishot = ring.submitter().register_probe(&mut ops).is_ok()
            && ops.is_supported(opcode::ReadMulti::CODE);
        Probe {
            kernel: kernel_release(),
            buffer_ring,
            kernel_allocated_ring,
            incremental,
            min_left,
            pbuf_status,
            bundles: ring.params().is_feature_recvsend_bundle(),
            read_multishot,
        }
    }
}

fn probe_pbuf_status(ring: &IoUring) -> bool {
    match BufRing::builder(PROBE_BGID, 1).register(ring) {
        Ok(r) => r.head().is_ok(),
        Err(_) => false,
    }
}

/// `uname -r`.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid utsname to write into.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates `release`.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
