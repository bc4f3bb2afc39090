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
    /// Receive bundles on incremental rings (6.15), found by receiving one across two buffers.
    pub incremental_bundles: bool,
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
        let support = bundle_support();
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
            incremental_bundles: incremental && support.incremental_bundles,
            read_multishot,
        }
    }
}

/// Whether the kernel has io_uring but no buffer rings, tried on a scratch io_uring (kernels
/// before 5.19 answer a ring registration with EINVAL, like a bad argument would).
pub(crate) fn buffer_ring_missing() -> bool {
    IoUring::new(4).is_ok_and(|ring| BufRing::builder(PROBE_BGID, 1).register(&ring).is_err())
}

/// Whether an eventfd registered with a ring set up as the driver's (`deferred`: with
/// IORING_SETUP_DEFER_TASKRUN) becomes readable, for a thread sleeping in poll(2) on it, when
/// data arrives for a receive armed on that ring: what `Driver::readiness_fd` promises. 6.18
/// does both; 6.12 neither (it signals only once completions are posted, which needs the
/// thread to enter the ring); 6.1 not with deferred task work. Tried once per mode on a scratch
/// ring: a receive on a socket pair is armed, another thread writes a byte 20 ms later, and
/// this thread polls the eventfd for up to 500 ms.
///
/// The trial alone is not enough: on 6.1 and 6.12 it came out positive in the kernel matrix
/// while the driver's own multishot receive then never woke the poller. So kernels before
/// 6.13 are refused outright (the first release after the last one seen failing; 6.18 is the
/// one seen working).
pub(crate) fn receive_signals_eventfd(deferred: bool) -> bool {
    static DEFERRED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    static PLAIN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let cell = if deferred { &DEFERRED } else { &PLAIN };
    *cell.get_or_init(|| at_least(6, 13) && try_receive_eventfd(deferred))
}

/// Whether the running kernel's release is `major.minor` or later (false if it cannot say).
fn at_least(major: u32, minor: u32) -> bool {
    let release = kernel_release();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

fn try_receive_eventfd(deferred: bool) -> bool {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // The driver's own ring setup (see `DriverBuilder::build`), and a socket receive.
    let mut b = IoUring::<io_uring::squeue::Entry>::builder();
    b.setup_single_issuer().setup_taskrun_flag();
    if deferred {
        b.setup_coop_taskrun().setup_defer_taskrun();
    }
    let Ok(mut ring) = b.build(2) else {
        return false;
    };
    let mut fds = [0; 2];
    // SAFETY: socketpair and eventfd write the fds into the live array / return a fresh fd.
    let (efd, pair_ok) = unsafe {
        (
            libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK),
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            ) == 0,
        )
    };
    if efd < 0 || !pair_ok {
        return false;
    }
    // SAFETY: fresh fds nothing else owns.
    let (efd, rd, wr) = unsafe {
        (
            OwnedFd::from_raw_fd(efd),
            OwnedFd::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    };
    if ring.submitter().register_eventfd(efd.as_raw_fd()).is_err() {
        return false;
    }
    let mut byte = Box::new(0u8);
    let recv =
        io_uring::opcode::Recv::new(io_uring::types::Fd(rd.as_raw_fd()), &mut *byte, 1).build();
    // SAFETY: the byte is boxed and kept until the receive's completion has been reaped below
    // (or leaked if it never comes).
    if unsafe { ring.submission().push(&recv) }.is_err() || ring.submit().is_err() {
        return false;
    }
    let writer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        // SAFETY: writes one byte from a live u8 to the socket the thread owns.
        unsafe { libc::write(wr.as_raw_fd(), (&1u8 as *const u8).cast(), 1) };
        wr
    });
    let mut p = libc::pollfd {
        fd: efd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one live pollfd.
    let signalled = unsafe { libc::poll(&mut p, 1, 500) } == 1;
    let _wr = writer.join();
    // Reap the receive so that its buffer may go.
    let done = ring
        .submitter()
        .submit_with_args(
            1,
            &io_uring::types::SubmitArgs::new().timespec(&io_uring::types::Timespec::new().sec(1)),
        )
        .is_ok()
        && ring.completion().next().is_some();
    if !done {
        std::mem::forget(byte);
    }
    signalled
}

/// Whether bundles work, and whether they work on incremental rings.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BundleSupport {
    pub(crate) bundles: bool,
    pub(crate) incremental_bundles: bool,
}

/// Tries bundles on a scratch io_uring: the feature flag, then a real bundle receive of 100
/// bytes into an incremental ring of two 64-byte buffers, which only a kernel that bundles
/// incremental buffers completes with all 100 bytes.
pub(crate) fn bundle_support() -> BundleSupport {
    let Ok(mut ring) = IoUring::new(4) else {
        return BundleSupport::default();
    };
    let bundles = ring.params().is_feature_recvsend_bundle();
    let incremental_bundles = bundles && try_incremental_bundle(&mut ring);
    BundleSupport {
        bundles,
        incremental_bundles,
    }
}

fn try_incremental_bundle(ring: &mut IoUring) -> bool {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    const LEN: u32 = 64;
    let Ok(mut br) = BufRing::builder(PROBE_BGID, 2)
        .incremental(true)
        .register(ring)
    else {
        return false;
    };
    let Ok((rx, mut tx)) = std::os::unix::net::UnixStream::pair() else {
        return false;
    };
    let mem: &'static mut [u8] = Box::leak(vec![0u8; 2 * LEN as usize].into_boxed_slice());
    let base = mem.as_mut_ptr() as u64;
    for bid in 0..2u16 {
        // SAFETY: `mem` is leaked, so it stays valid whatever the kernel does with it; the ring
        // is empty, so the slots are free.
        unsafe { br.add(base + u64::from(bid) * u64::from(LEN), LEN, bid, bid) };
    }
    // SAFETY: both entries were just added.
    unsafe { br.advance(2) };
    if tx.write_all(&[0x5a; 100]).is_err() {
        return false;
    }
    let sqe = opcode::RecvBundle::new(io_uring::types::Fd(rx.as_raw_fd()), PROBE_BGID)
        .build()
        .user_data(1);
    // SAFETY: the buffers are leaked memory (valid forever), the SQE names no other memory.
    if unsafe { ring.submission().push(&sqe) }.is_err() {
        return false;
    }
    let ts = io_uring::types::Timespec::new().sec(1);
    let args = io_uring::types::SubmitArgs::new().timespec(&ts);
    let _ = ring.submitter().submit_with_args(1, &args);
    let ok = ring
        .completion()
        .any(|c| c.user_data() == 1 && c.result() == 100);
    // Give the memory back only when the request is known to be over; otherwise it stays
    // leaked (a few bytes) rather than risk a late write.
    if ok {
        drop(br);
        // SAFETY: the request completed and the ring is unregistered: the kernel no longer
        // references `mem`, and we hold the only reference to it.
        drop(unsafe { Box::from_raw(mem as *mut [u8]) });
    }
    ok
}

fn probe_pbuf_status(ring: &IoUring) -> bool {
    match BufRing::builder(PROBE_BGID, 1).register(ring) {
        Ok(r) => r.head().is_ok(),
        Err(_) => false,
    }
}

/// `uname -r`.
pub(crate) fn kernel_release() -> String {
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
