//! The operating system pieces the workloads need: CPU pinning, per-thread CPU time, the
//! descriptor limit, a memfd to send from, and peak RSS.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// CPUs this process may run on, as found on first call (before any thread pinned itself,
/// which would shrink the answer to one).
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The receiver's CPU and the sender's: different ones when there are two or more.
pub fn receiver_cpu() -> Option<usize> {
    (cpus() >= 2).then_some(0)
}

pub fn sender_cpu() -> Option<usize> {
    (cpus() >= 2).then_some(1)
}

/// Pins the calling thread to `cpu` (no-op for `None`; best effort).
pub fn pin(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it; the call only
    // reads the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// User + system CPU seconds of the calling thread so far.
pub fn thread_cpu_secs() -> f64 {
    // SAFETY: getrusage writes one rusage struct, which we provide zeroed.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Makes sure at least `want` descriptors may be open: raises the soft limit, and the hard one
/// when allowed. Returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct we own.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        if rl.rlim_cur >= want {
            return rl.rlim_cur;
        }
        let try_set = |cur: u64, max: u64| {
            let r = libc::rlimit {
                rlim_cur: cur,
                rlim_max: max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0
        };
        if want > rl.rlim_max && try_set(want, want) {
            return want;
        }
        let cur = want.min(rl.rlim_max);
        if try_set(cur, rl.rlim_max) {
            cur
        } else {
            rl.rlim_cur
        }
    }
}

/// A memfd of `len` bytes of a fixed pattern: the sender's source for sendfile().
pub fn memfd(len: usize) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create with a static NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"bufring-bench".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    let mut off = 0;
    while off < len {
        // SAFETY: writes from our own vector, within its length.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                data[off..].as_ptr().cast(),
                len - off,
                off as i64,
            )
        };
        if n <= 0 {
            return Err(io::Error::last_os_error());
        }
        off += n as usize;
    }
    Ok(fd)
}

/// sendfile() of `len` bytes at `offset` of `src` to `sock`; returns the bytes sent.
pub fn sendfile(sock: RawFd, src: RawFd, offset: usize, len: usize) -> io::Result<usize> {
    let mut off = offset as libc::off_t;
    // SAFETY: plain syscall on descriptors the caller owns; `off` is ours.
    let n = unsafe { libc::sendfile(sock, src, &mut off, len) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Resets the process's peak RSS (VmHWM) to the current RSS (Linux 4.0+; best effort).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak RSS in bytes (VmHWM), if readable.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Sets or clears O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns; no memory involved.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 {
            return Err(io::Error::last_os_error());
        }
        let nfl = if on {
            fl | libc::O_NONBLOCK
        } else {
            fl & !libc::O_NONBLOCK
        };
        if libc::fcntl(fd, libc::F_SETFL, nfl) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The machine, for the report: CPU model and kernel release.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{} CPUs ({cpu}), Linux {}",
        cpus(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|r| r.trim().to_string())
            .unwrap_or_else(|_| "(unknown release)".into())
    )
}
