//! What each kernel should give, by its release (`uname -r`), as the README's kernel table
//! says: the same API on every kernel, with the fallbacks the table promises where a feature
//! is missing. `scripts/kernel-matrix.sh` runs this file on real Debian 6.1 and 6.12 kernels
//! under QEMU; `cargo test` runs it on the host's kernel.
//!
//! The expectations follow mainline's version numbers (Debian's stable kernels backport
//! fixes, not these features). A vendor kernel that backports features (RHEL and friends)
//! can legitimately differ: set BUFRING_NO_KERNEL_EXPECTATIONS=1 there to skip this file.
//!
//! This file hands CQEs to a pool in one place only, [`take`].

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bufring::{Backend, BufRing, Completion, Cqe, Error, Feature, Incremental, Pool, Probe};
use common::Reap;
use io_uring::{cqueue, opcode, types, IoUring};

/// The running kernel's (major, minor), from `uname -r`.
fn version() -> (u32, u32) {
    let release = release();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|s| s.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!("cannot read a version from the kernel release {release:?}"),
    }
}

/// `uname -r`.
fn release() -> String {
    // SAFETY: utsname is plain old data, which uname fills (NUL-terminated fields).
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        assert_eq!(libc::uname(&mut u), 0);
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// The first mainline kernel of each feature, as the README's kernel table has it.
fn since(f: Feature) -> (u32, u32) {
    match f {
        Feature::IoUring => (5, 1),
        Feature::BufferRing => (5, 19),
        Feature::KernelAllocatedRing => (6, 4),
        Feature::ReadMultishot => (6, 7),
        Feature::PbufStatus => (6, 8),
        Feature::Bundles => (6, 10),
        Feature::Incremental => (6, 12),
        Feature::IncrementalBundles => (6, 15),
        // min_left is being backported to stable kernels: no version decides it (see
        // `min_left_falls_back_as_documented`).
        f => panic!("no version for {f:?}"),
    }
}

/// Whether the running kernel should have `f`.
fn has(f: Feature) -> bool {
    version() >= since(f)
}

/// Multishot recv (6.0): no `Feature` of its own (the request fails with EINVAL before).
const MULTISHOT_RECV: (u32, u32) = (6, 0);

/// The feature a registration that needs all of `fs` reports missing: the oldest one the
/// kernel lacks (buffer rings before everything else), or `None` if it has them all.
fn first_missing(fs: &[Feature]) -> Option<Feature> {
    fs.iter()
        .copied()
        .filter(|&f| !has(f))
        .min_by_key(|&f| since(f))
}

/// An io_uring for this file's tests, or `None` (with a message) where io_uring is unavailable
/// or the expectations are switched off.
fn uring(entries: u32) -> Option<IoUring> {
    if std::env::var("BUFRING_NO_KERNEL_EXPECTATIONS").as_deref() == Ok("1") {
        eprintln!("SKIPPED: BUFRING_NO_KERNEL_EXPECTATIONS=1");
        return None;
    }
    let ring = common::uring(entries)?;
    eprintln!("kernel {} read as {:?}", release(), version());
    Some(ring)
}

fn unsupported<T: std::fmt::Debug>(r: Result<T, Error>, feature: Feature) {
    match r {
        Err(Error::Unsupported { feature: f }) if f == feature => {}
        other => panic!(
            "kernel {:?}: expected Unsupported({feature:?}), got {other:?}",
            version()
        ),
    }
}

/// What [`take`] found in one CQE.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    /// (bytes, bid, offset in the buffer, buffer retired with this chunk, request goes on)
    Data(Vec<u8>, u16, u32, bool, bool),
    EndOfStream,
    NoBuffers,
    Failed(i32),
}

/// The one place this file hands a CQE to the pool (through `common::Reap`, whose SAFETY
/// comment covers this file too: only CQEs reaped from the pool's own io_uring, each once).
/// The chunk is copied out and dropped, so its buffer can go back at the next publish.
fn take(pool: &mut Pool, res: i32, flags: u32) -> Got {
    match pool
        .reap(Cqe::new(res, flags))
        .expect("kernel completion rejected")
    {
        Completion::Data { chunks, more } => {
            let chunk = chunks
                .into_single()
                .unwrap_or_else(|_| panic!("a plain receive filled several buffers"));
            Got::Data(
                chunk.to_vec(),
                chunk.bid(),
                chunk.offset(),
                chunk.is_last(),
                more,
            )
        }
        Completion::EndOfStream => Got::EndOfStream,
        Completion::NoBuffers => Got::NoBuffers,
        Completion::Failed(e) => Got::Failed(e.raw_os_error().unwrap_or(0)),
    }
}

fn small_pool(bgid: u16) -> bufring::PoolBuilder {
    Pool::builder(bgid).count(2).buf_len(4096)
}

#[test]
fn probe_matches_the_kernel_table() {
    let Some(ring) = uring(8) else { return };
    let p = Probe::run_on(&ring);
    eprintln!("{p:?}");
    let want = [
        ("buffer_ring", p.buffer_ring, Feature::BufferRing),
        (
            "kernel_allocated_ring",
            p.kernel_allocated_ring,
            Feature::KernelAllocatedRing,
        ),
        ("read_multishot", p.read_multishot, Feature::ReadMultishot),
        ("pbuf_status", p.pbuf_status, Feature::PbufStatus),
        ("bundles", p.bundles, Feature::Bundles),
        ("incremental", p.incremental, Feature::Incremental),
        (
            "incremental_bundles",
            p.incremental_bundles,
            Feature::IncrementalBundles,
        ),
    ];
    for (name, got, f) in want {
        assert_eq!(
            got,
            has(f),
            "kernel {:?}: probe says {name} = {got}, the README's table says it came in {:?}",
            version(),
            since(f)
        );
    }
    // min_left needs incremental rings; where they exist, it depends on a backport.
    if !p.incremental {
        assert!(!p.min_left);
    }
}

/// 6.1: `Kernel` fails with Unsupported(Incremental), `Auto` picks emulation; 6.12+: both get
/// the kernel's incremental consumption.
#[test]
fn incremental_kernel_or_unsupported_and_auto_falls_back() {
    let Some(ring) = uring(8) else { return };
    let kernel = small_pool(10).incremental(Incremental::Kernel).build(&ring);
    let auto = small_pool(11).incremental(Incremental::Auto).build(&ring);
    let emulated = small_pool(12)
        .incremental(Incremental::Emulated)
        .build(&ring)
        .expect("emulation works on every kernel with provided buffers");
    assert_eq!(emulated.incremental(), Incremental::Emulated);
    let auto = auto.expect("Auto builds on every kernel");
    assert!(auto.is_incremental());
    match first_missing(&[Feature::BufferRing, Feature::Incremental]) {
        None => {
            assert_eq!(
                kernel.expect("kernel INC").incremental(),
                Incremental::Kernel
            );
            assert_eq!(auto.incremental(), Incremental::Kernel);
        }
        Some(missing) => {
            unsupported(kernel, missing);
            assert_eq!(auto.incremental(), Incremental::Emulated);
        }
    }
}

/// The worked example of the commit that introduced incremental consumption (two 32 KiB
/// buffers, sends of 4096, 8192, 20480, 4096 bytes) through an `Auto` pool: every byte arrives,
/// each buffer's data starts where its previous data ended, and the completions are the ones
/// the mode the kernel allows produces.
#[test]
fn auto_delivers_the_seed_example() {
    let Some(mut ring) = uring(64) else { return };
    if version() < MULTISHOT_RECV {
        eprintln!("SKIPPED: the example uses a multishot recv (6.0)");
        return;
    }
    let mut pool = Pool::builder(13)
        .count(2)
        .buf_len(32 * 1024)
        .incremental(Incremental::Auto)
        .build(&ring)
        .unwrap();
    let mode = pool.incremental();
    let (rx, mut tx) = common::tcp_pair();
    common::push(&mut ring, &pool.recv_multishot(rx.as_raw_fd()));
    let mut seen = Vec::new();
    for size in [4096usize, 8192, 20480, 4096] {
        tx.write_all(&vec![size as u8; size]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = 0;
        while got < size {
            assert!(Instant::now() < deadline, "send of {size} not received");
            for (_, res, flags) in common::reap(&mut ring, Duration::from_secs(1)) {
                match take(&mut pool, res, flags) {
                    Got::Data(bytes, bid, offset, last, more) => {
                        assert!(more, "multishot ended early");
                        assert!(bytes.iter().all(|&b| b == size as u8));
                        got += bytes.len();
                        seen.push((bytes.len(), bid, offset, !last));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            pool.publish();
        }
    }
    let want = if has(Feature::Incremental) {
        assert_eq!(mode, Incremental::Kernel);
        // The kernel keeps filling bid 0 until it is used up, then takes bid 1.
        vec![
            (4096, 0, 0, true),
            (8192, 0, 4096, true),
            (20480, 0, 12288, false),
            (4096, 1, 0, true),
        ]
    } else {
        assert_eq!(mode, Incremental::Emulated);
        // bufring re-posts each rest at the tail: ring order is bid 0, bid 1, rest of 0, ...
        vec![
            (4096, 0, 0, true),
            (8192, 1, 0, true),
            (20480, 0, 4096, true),
            (4096, 1, 8192, true),
        ]
    };
    assert_eq!(seen, want, "{mode:?} on {:?}", version());
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no end of stream");
        let cqes = common::reap(&mut ring, Duration::from_secs(1));
        if let Some(&(_, res, flags)) = cqes.first() {
            assert_eq!(take(&mut pool, res, flags), Got::EndOfStream);
            break;
        }
    }
}

/// Bundles: 6.10. Below, `.bundles(true)` fails with Unsupported(Bundles) whatever the mode.
#[test]
fn bundles_or_unsupported() {
    let Some(ring) = uring(8) else { return };
    let classic = small_pool(20).bundles(true).build(&ring);
    let emulated = small_pool(21)
        .incremental(Incremental::Emulated)
        .bundles(true)
        .build(&ring);
    if has(Feature::Bundles) {
        assert_eq!(classic.unwrap().incremental(), Incremental::Off);
        assert_eq!(emulated.unwrap().incremental(), Incremental::Emulated);
    } else {
        unsupported(classic, Feature::Bundles);
        unsupported(emulated, Feature::Bundles);
    }
}

/// Bundles on incremental rings: 6.15. `Kernel` + bundles is Unsupported(IncrementalBundles)
/// on 6.10–6.14 (Unsupported(Bundles) below 6.10); `Auto` + bundles emulates there.
#[test]
fn incremental_bundles_or_unsupported_or_emulated() {
    let Some(ring) = uring(8) else { return };
    let kernel = small_pool(22)
        .incremental(Incremental::Kernel)
        .bundles(true)
        .build(&ring);
    let auto = small_pool(23)
        .incremental(Incremental::Auto)
        .bundles(true)
        .build(&ring);
    if has(Feature::IncrementalBundles) {
        assert_eq!(kernel.unwrap().incremental(), Incremental::Kernel);
        assert_eq!(auto.unwrap().incremental(), Incremental::Kernel);
    } else if has(Feature::Bundles) {
        unsupported(kernel, Feature::IncrementalBundles);
        assert_eq!(auto.unwrap().incremental(), Incremental::Emulated);
    } else {
        unsupported(kernel, Feature::Bundles);
        unsupported(auto, Feature::Bundles);
    }
}

/// PBUF_STATUS: 6.8. Below, `BufRing::head` and `available` are Unsupported(PbufStatus) while
/// the pool's own shadow head goes on working.
#[test]
fn pbuf_status_or_unsupported() {
    let Some(ring) = uring(8) else { return };
    if !has(Feature::BufferRing) {
        // Before 5.19: no rings to ask; `Backend::Auto` pools use legacy provided buffers.
        unsupported(BufRing::builder(24, 4).register(&ring), Feature::BufferRing);
        let ring_pool = small_pool(25).backend(Backend::Ring).build(&ring);
        unsupported(ring_pool, Feature::BufferRing);
        let pool = small_pool(25).build(&ring).unwrap();
        assert_eq!(pool.backend(), Backend::Legacy);
        assert!(pool.ring().is_none());
        return;
    }
    let br = BufRing::builder(24, 4).register(&ring).unwrap();
    let pool = small_pool(25).build(&ring).unwrap();
    let pool_ring = pool.ring().expect("a ring pool (5.19+)");
    if has(Feature::PbufStatus) {
        assert_eq!(br.head().unwrap(), 0);
        assert_eq!(br.available().unwrap(), 0);
        assert_eq!(pool_ring.head().unwrap(), pool.shadow_head());
        assert_eq!(pool_ring.available().unwrap(), 2);
    } else {
        unsupported(br.head(), Feature::PbufStatus);
        unsupported(br.available(), Feature::PbufStatus);
        unsupported(pool_ring.head(), Feature::PbufStatus);
    }
    assert_eq!(pool.shadow_head(), 0);
}

/// Kernel-allocated rings: 6.4.
#[test]
fn kernel_allocated_ring_or_unsupported() {
    let Some(ring) = uring(8) else { return };
    let r = BufRing::builder(26, 4)
        .kernel_allocated(true)
        .register(&ring);
    let pool = small_pool(27).kernel_allocated(true).build(&ring);
    match first_missing(&[Feature::BufferRing, Feature::KernelAllocatedRing]) {
        None => {
            assert!(r.unwrap().is_kernel_allocated());
            assert!(pool.unwrap().ring().unwrap().is_kernel_allocated());
        }
        Some(Feature::BufferRing) => {
            unsupported(r, Feature::BufferRing);
            // `Backend::Auto` falls back to legacy provided buffers (no ring to allocate).
            assert_eq!(pool.unwrap().backend(), Backend::Legacy);
        }
        Some(missing) => {
            unsupported(r, missing);
            unsupported(pool, missing);
        }
    }
}

/// `min_left`: `Kernel` + min_left is Unsupported(MinLeft) where the kernel lacks it and
/// Unsupported(Incremental) where it lacks incremental rings altogether; `Auto` and `Emulated`
/// apply it themselves.
#[test]
fn min_left_falls_back_as_documented() {
    let Some(ring) = uring(8) else { return };
    let probe = Probe::run_on(&ring);
    let kernel = small_pool(28)
        .incremental(Incremental::Kernel)
        .min_left(100)
        .build(&ring);
    let auto = small_pool(29)
        .incremental(Incremental::Auto)
        .min_left(100)
        .build(&ring)
        .expect("Auto + min_left builds on every kernel");
    let emulated = small_pool(30)
        .incremental(Incremental::Emulated)
        .min_left(100)
        .build(&ring)
        .expect("Emulated + min_left builds on every kernel");
    assert_eq!(emulated.incremental(), Incremental::Emulated);
    if probe.min_left {
        assert!(has(Feature::Incremental));
        let kernel = kernel.unwrap();
        assert_eq!(kernel.incremental(), Incremental::Kernel);
        assert_eq!(kernel.ring().unwrap().min_left(), 100);
        assert_eq!(auto.incremental(), Incremental::Kernel);
    } else {
        // The kernel answers EINVAL either way; the oldest feature missing names the error.
        let missing =
            first_missing(&[Feature::BufferRing, Feature::Incremental]).unwrap_or(Feature::MinLeft);
        unsupported(kernel, missing);
        assert_eq!(auto.incremental(), Incremental::Emulated);
    }
}

/// READ_MULTISHOT: 6.7. Below, the request fails with EINVAL (README: use `Pool::read`).
#[test]
fn read_multishot_or_einval() {
    let Some(mut ring) = uring(8) else { return };
    let mut pool = small_pool(31).build(&ring).unwrap();
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let mut w = std::fs::File::from(unsafe {
        // SAFETY: pipe2 just made this fd and nothing else owns it.
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[1])
    });
    // SAFETY: as above, for the read end.
    let r = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    w.write_all(b"pipe data").unwrap();
    drop(w);
    common::push(&mut ring, &pool.read_multishot(r.as_raw_fd(), 0, u64::MAX));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.last().is_none_or(|g| matches!(g, Got::Data(.., true))) {
        assert!(Instant::now() < deadline, "read_multishot did not end");
        for (_, res, flags) in common::reap(&mut ring, Duration::from_secs(1)) {
            got.push(take(&mut pool, res, flags));
        }
        pool.publish();
    }
    if has(Feature::ReadMultishot) {
        assert!(
            matches!(&got[0], Got::Data(b, ..) if b == b"pipe data"),
            "{got:?}"
        );
    } else {
        assert_eq!(got, vec![Got::Failed(libc::EINVAL)]);
    }
}

/// A multishot bundle recv on a classic ring of 3 posted buffers of 391 bytes; 968 bytes
/// arrive in one write. The first completion takes bids 0 and 1 (782 bytes), the second the
/// last 186 bytes in bid 2, the last posted entry. Whether that ends the multishot differs:
/// 6.12 ends it (no F_MORE) because the round mapped the last posted entry; 6.18 ends a
/// multishot bundle only when a round mapped entries up to the tail *and* wanted more, so it
/// stays armed. Either way no data is lost; the pool's users re-arm on `more == false`.
/// (Found by model_vs_kernel's random bundle script 4, whose model follows 6.18.)
#[test]
fn multishot_bundle_on_the_last_posted_entry() {
    let Some(mut ring) = uring(16) else { return };
    if !has(Feature::Bundles) {
        eprintln!("SKIPPED: no bundles before 6.10 (bundles_or_unsupported checks that)");
        return;
    }
    const LEN: u32 = 391;
    // Leaked: if the test fails while the request is armed, nothing frees memory the kernel
    // may still write into (1173 bytes).
    let mem: &'static mut [u8] = Box::leak(vec![0u8; 3 * LEN as usize].into_boxed_slice());
    let base = mem.as_mut_ptr() as u64;
    let mut br = BufRing::builder(32, 4).register(&ring).unwrap();
    for bid in 0..3u16 {
        // SAFETY: `mem` is leaked, so valid whatever the kernel does; the ring is empty.
        unsafe { br.add(base + u64::from(bid) * u64::from(LEN), LEN, bid, bid) };
    }
    // SAFETY: the three entries above were written.
    unsafe { br.advance(3) };
    let (rx, mut tx) = common::tcp_pair();
    let sqe = opcode::RecvMultiBundle::new(types::Fd(rx.as_raw_fd()), 32)
        .build()
        .user_data(7);
    common::push(&mut ring, &sqe);
    tx.write_all(&[0xab; 968]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut cqes = Vec::new();
    let mut total = 0;
    while total < 968 {
        assert!(
            Instant::now() < deadline,
            "968 bytes not received: {cqes:?}"
        );
        for (_, res, flags) in common::reap(&mut ring, Duration::from_secs(1)) {
            assert!(res > 0, "{res} {cqes:?}");
            total += res;
            cqes.push((res, cqueue::buffer_select(flags), cqueue::more(flags)));
        }
    }
    eprintln!("{:?}: {cqes:?}", version());
    let last = *cqes.last().unwrap();
    if cqes == [(782, Some(0), true), (186, Some(2), last.2)] {
        // The case this test is about, on the kernels it was seen on.
        let v = version();
        if v == (6, 12) {
            assert!(!last.2, "6.12 kept the multishot armed");
        } else if v >= (6, 18) {
            assert!(last.2, "{v:?} ended the multishot");
        } else {
            eprintln!(
                "{v:?}: F_MORE = {} (not yet recorded for this kernel)",
                last.2
            );
        }
    } else {
        eprintln!("SKIPPED: the data came in other pieces here ({cqes:?})");
    }
    if cqes.last().unwrap().2 {
        // Still armed: cancel it and wait for the end, so `mem` is free again.
        let cancel = opcode::AsyncCancel::new(7).build().user_data(8);
        common::push(&mut ring, &cancel);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ended = false;
        while !ended {
            assert!(Instant::now() < deadline, "cancel did not end the request");
            for (ud, _, flags) in common::reap(&mut ring, Duration::from_secs(1)) {
                ended |= ud == 7 && !cqueue::more(flags);
            }
        }
    }
    drop(br);
}
