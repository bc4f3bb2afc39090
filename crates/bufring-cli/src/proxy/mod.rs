//! `bufring proxy`: a TCP proxy on provided buffers, built on [`bufring::driver`]. One driver
//! (one io_uring, one pool) and one SO_REUSEPORT listener per thread; both sockets of every
//! pair receive into the pool only when data arrives, and each piece is sent on straight from
//! its chunk. The connection logic is `worker.rs`: the template for a server of your own.
//!
//! Against broken or hostile peers: connects time out, pairs where nothing moved for the idle
//! timeout are closed, a reset on one side resets the other (also while its receive is paused),
//! forced closes send resets (SO_LINGER 0) so nobody takes a cut stream for a whole one, slow
//! readers get their fair share of the pool and no more (the driver's quotas and spills), and
//! running out of file descriptors pauses accepting instead of spinning.
//!
//! [`Proxy::start`] runs the proxy in the calling process (tests use it); [`run`] is the
//! command: it adds signals (SIGINT/SIGTERM/SIGHUP drain and exit, a second one closes
//! everything at once, SIGUSR1 prints statistics).

mod net;
mod worker;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bufring::driver::{DriverStats, DriverWaker};
use bufring::{Incremental, PoolStats};

/// Options of `bufring proxy`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to accept clients on (e.g. 127.0.0.1:8080 or localhost:8080).
    #[arg(long)]
    listen: String,
    /// Address to forward every connection to (host:port; a name is resolved once, at start).
    #[arg(long)]
    upstream: String,
    /// Worker threads, each with its own io_uring and pool (default: one per core; at most
    /// four per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Incremental consumption: `auto` uses it when the kernel has it.
    #[arg(long, value_enum, default_value_t = IncrementalArg::Auto)]
    incremental: IncrementalArg,
    /// Multishot bundle receives (one completion hands over every buffer the data filled):
    /// `auto` uses them when the kernel has them (and, with kernel incremental consumption,
    /// bundles on incremental rings). The driver arms them only on sockets that receive big
    /// pieces (bulk transfers); small messages are received one buffer per completion.
    #[arg(long, value_enum, default_value_t = Switch::Auto)]
    bundles: Switch,
    /// Bytes per buffer.
    #[arg(long, default_value_t = 64 * 1024)]
    buf_size: u32,
    /// Buffers per thread (posted to the kernel as traffic needs them).
    #[arg(long, default_value_t = 1024)]
    buffers: u32,
    /// Connections open at once (all threads); more are closed as soon as accepted.
    #[arg(long, default_value_t = 100_000)]
    max_connections: usize,
    /// Bytes a direction holds at most: received and not yet forwarded, plus queued and not
    /// yet sent (the pair's sockets are linked: the receive quota covers both). At least
    /// --buf-size.
    #[arg(long, default_value_t = DEFAULT_MAX_UNSENT)]
    max_unsent: usize,
    /// Seconds an upstream connect may take (0: no limit).
    #[arg(long, default_value_t = 5.0)]
    connect_timeout: f64,
    /// Seconds without a byte moving either way before a pair is reset (0: no limit).
    #[arg(long, default_value_t = 300.0)]
    idle_timeout: f64,
    /// Seconds to let connections finish after SIGINT/SIGTERM/SIGHUP before resetting them.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
}

/// The default `--max-unsent`: room for multi-megabyte batches (a sendmsg carries up to 64
/// chunks) without giving up the bound. 2 MiB since the pair's sockets are linked (it bounds
/// received and unsent bytes together): the 1 MiB of before bounded each of the two, and a
/// bulk stream through one thread made about 8 % less with 1 MiB for both.
pub const DEFAULT_MAX_UNSENT: usize = 2 << 20;

/// `--incremental`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncrementalArg {
    /// Kernel incremental consumption when supported, emulated by bufring otherwise.
    Auto,
    /// Kernel incremental consumption (an error on kernels without it).
    On,
    /// Incremental consumption emulated by bufring on a classic ring (any kernel).
    Emulated,
    /// Classic buffers: each receive takes a whole buffer.
    Off,
}

impl IncrementalArg {
    /// The pool mode this asks for.
    pub fn resolve(self) -> Incremental {
        match self {
            IncrementalArg::On => Incremental::Kernel,
            IncrementalArg::Off => Incremental::Off,
            IncrementalArg::Emulated => Incremental::Emulated,
            IncrementalArg::Auto => Incremental::Auto,
        }
    }
}

/// `--bundles`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    /// When the kernel has it.
    Auto,
    /// Always (an error on kernels without it).
    On,
    /// Never.
    Off,
}

/// Whether `auto` bundles are on for `incremental` on this kernel: when the kernel has bundles,
/// and never at the cost of kernel incremental consumption (before 6.15 the two do not mix).
pub fn auto_bundles(incremental: Incremental) -> bool {
    let Ok(p) = bufring::Probe::run() else {
        return false;
    };
    match incremental {
        Incremental::Off | Incremental::Emulated => p.bundles,
        Incremental::Kernel => p.incremental_bundles,
        _ => p.bundles && (!p.incremental || p.incremental_bundles),
    }
}

/// Everything a proxy needs to start. [`Config::check`] says whether it makes sense.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub threads: usize,
    pub incremental: Incremental,
    /// Multishot bundle receives.
    pub bundles: bool,
    pub buf_size: u32,
    pub buffers: u32,
    pub max_connections: usize,
    /// Backpressure bound: unsent bytes queued per direction.
    pub max_unsent: usize,
    /// How long an upstream connect may take.
    pub connect_timeout: Option<Duration>,
    /// How long a pair may stay without a byte moving either way.
    pub idle_timeout: Option<Duration>,
    /// How long a graceful shutdown waits for connections to end by themselves.
    pub drain_timeout: Duration,
}

impl Config {
    /// Defaults for the two addresses: one thread per core, 1024 buffers of 64 KiB per thread,
    /// incremental consumption and bundles when the kernel has them.
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> Self {
        Config {
            listen,
            upstream,
            threads: cores(),
            incremental: Incremental::Auto,
            bundles: auto_bundles(Incremental::Auto),
            buf_size: 64 * 1024,
            buffers: 1024,
            max_connections: 100_000,
            max_unsent: DEFAULT_MAX_UNSENT,
            connect_timeout: Some(Duration::from_secs(5)),
            idle_timeout: Some(Duration::from_secs(300)),
            drain_timeout: Duration::from_secs(10),
        }
    }

    /// The configuration `args` ask for, or what is wrong with them.
    pub fn from_args(args: &Args) -> Result<Config, String> {
        let listen = resolve("--listen", &args.listen)?;
        let upstream = resolve("--upstream", &args.upstream)?;
        let mut cfg = Config::new(listen, upstream);
        if let Some(t) = args.threads {
            cfg.threads = t;
        }
        cfg.incremental = args.incremental.resolve();
        cfg.bundles = match args.bundles {
            Switch::Auto => auto_bundles(cfg.incremental),
            Switch::On => true,
            Switch::Off => false,
        };
        cfg.buf_size = args.buf_size;
        cfg.buffers = args.buffers;
        cfg.max_connections = args.max_connections;
        cfg.max_unsent = args.max_unsent;
        cfg.connect_timeout = seconds("--connect-timeout", args.connect_timeout)?;
        cfg.idle_timeout = seconds("--idle-timeout", args.idle_timeout)?;
        cfg.drain_timeout = seconds("--drain-timeout", args.drain_timeout)?.unwrap_or_default();
        cfg.check()?;
        Ok(cfg)
    }

    /// Whether the values make sense together.
    pub fn check(&self) -> Result<(), String> {
        let max_threads = 4 * cores();
        if self.threads == 0 || self.threads > max_threads {
            return Err(format!(
                "--threads must be between 1 and {max_threads} (four per core), not {}",
                self.threads
            ));
        }
        if self.upstream.port() == 0 {
            return Err(format!(
                "--upstream {}: port 0 names no server",
                self.upstream
            ));
        }
        if self.upstream.ip().is_unspecified() {
            return Err(format!(
                "--upstream {}: an unspecified address",
                self.upstream
            ));
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.buf_size == 0 || self.buffers == 0 {
            return Err("--buf-size and --buffers must be at least 1".into());
        }
        if self.max_unsent < self.buf_size as usize {
            return Err(format!(
                "--max-unsent ({}) must be at least --buf-size ({}): a chunk is never split",
                self.max_unsent, self.buf_size
            ));
        }
        Ok(())
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `host:port` to one address (the first a name resolves to).
fn resolve(flag: &str, s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{flag} {s}: {e}"))?
        .next()
        .ok_or_else(|| format!("{flag} {s}: the name has no address"))
}

/// Seconds as a timeout: 0 means none; negative, NaN or absurd values are errors.
fn seconds(flag: &str, v: f64) -> Result<Option<Duration>, String> {
    if !(0.0..1e9).contains(&v) {
        return Err(format!("{flag} must be a number of seconds, not {v}"));
    }
    Ok((v > 0.0).then(|| Duration::from_secs_f64(v)))
}

pub(crate) const RUN: u8 = 0;
pub(crate) const DRAIN: u8 = 1;
pub(crate) const FORCE: u8 = 2;

/// What the handle and the workers share.
pub(crate) struct Shared {
    pub state: AtomicU8,
    /// Print every connection's state (diagnostics).
    pub dump: Vec<AtomicBool>,
    /// Connections open, all threads (for `max_connections`).
    pub active: AtomicUsize,
    /// Each worker's counters, refreshed after every batch of events.
    pub stats: Vec<Mutex<ThreadStats>>,
}

/// What a worker reports once its driver runs.
pub(crate) struct Started {
    pub waker: DriverWaker,
    /// The pool's mode as the kernel allowed it.
    pub incremental: Incremental,
    pub bundles: bool,
}

/// One worker's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadStats {
    pub accepted: u64,
    pub active: u64,
    pub closed: u64,
    /// Connections closed at once because `max_connections` were open.
    pub refused_limit: u64,
    /// Upstream connections that failed (refused, unreachable, timed out, no descriptor).
    pub upstream_failed: u64,
    /// Of those, connects that timed out.
    pub connect_timeouts: u64,
    /// Pairs reset because nothing moved either way for the idle timeout.
    pub idle_closed: u64,
    /// Pairs reset because one side reset or failed.
    pub resets: u64,
    /// Pairs reset by a forced shutdown (drain deadline, second signal).
    pub forced: u64,
    pub accept_errors: u64,
    /// Bytes client → upstream.
    pub bytes_up: u64,
    /// Bytes upstream → client.
    pub bytes_down: u64,
    /// Times a direction was held back: forwarding stopped because the destination had its
    /// room unsent, or the driver stopped the source's receive at its quota (which, with the
    /// pair linked, counts the destination's unsent bytes too).
    pub backpressure_pauses: u64,
    /// The most unsent bytes one direction ever had queued.
    pub peak_unsent: u64,
    /// 1 if receives stop at their quota by the kernel's byte limit (6.17), 0 if by cancels.
    pub recv_limited: u64,
    pub pool: PoolStats,
    pub driver: DriverStats,
}

/// Counters of every worker.
#[derive(Debug, Clone)]
pub struct ProxyStats {
    pub threads: Vec<ThreadStats>,
}

impl ProxyStats {
    /// Sums over the threads (peaks: the largest).
    pub fn total(&self) -> ThreadStats {
        let mut t = ThreadStats::default();
        for s in &self.threads {
            t.accepted += s.accepted;
            t.active += s.active;
            t.closed += s.closed;
            t.refused_limit += s.refused_limit;
            t.upstream_failed += s.upstream_failed;
            t.connect_timeouts += s.connect_timeouts;
            t.idle_closed += s.idle_closed;
            t.resets += s.resets;
            t.forced += s.forced;
            t.accept_errors += s.accept_errors;
            t.bytes_up += s.bytes_up;
            t.bytes_down += s.bytes_down;
            t.backpressure_pauses += s.backpressure_pauses;
            t.peak_unsent = t.peak_unsent.max(s.peak_unsent);
            t.recv_limited = t.recv_limited.max(s.recv_limited);
            let p = &mut t.pool;
            p.buffers += s.pool.buffers;
            p.in_kernel += s.pool.in_kernel;
            p.with_app += s.pool.with_app;
            p.peak_with_app = p.peak_with_app.max(s.pool.peak_with_app);
            p.completions += s.pool.completions;
            p.bytes_delivered += s.pool.bytes_delivered;
            p.buffers_retired += s.pool.buffers_retired;
            p.bytes_retired += s.pool.bytes_retired;
            p.bytes_used_retired += s.pool.bytes_used_retired;
            p.enobufs += s.pool.enobufs;
            p.rejected += s.pool.rejected;
            p.reposted += s.pool.reposted;
            p.publishes += s.pool.publishes;
            p.bundles += s.pool.bundles;
            p.emulated_reposts += s.pool.emulated_reposts;
            p.parked += s.pool.parked;
            p.posted_target += s.pool.posted_target;
            p.trimmed_bytes += s.pool.trimmed_bytes;
            let (d, e) = (&mut t.driver, &s.driver);
            d.completions += e.completions;
            d.stray += e.stray;
            d.rejected += e.rejected;
            d.sockets += e.sockets;
            d.quota_pauses += e.quota_pauses;
            d.rearms_after_wait += e.rearms_after_wait;
            d.spilled_chunks += e.spilled_chunks;
            d.spilled_bytes += e.spilled_bytes;
            d.spill_cancels += e.spill_cancels;
            d.accept_pauses += e.accept_pauses;
            d.return_wakes += e.return_wakes;
            d.connect_timeouts += e.connect_timeouts;
            d.idle_timeouts += e.idle_timeouts;
            d.target_changes += e.target_changes;
            d.enters += e.enters;
        }
        t
    }
}

impl fmt::Display for ThreadStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.driver;
        write!(
            f,
            "connections {} accepted, {} active, {} closed, {} refused at the limit, {} upstream \
             failed ({} timed out), {} reset by a peer, {} idle, {} forced; bytes \
             client->upstream {}, upstream->client {}; pool {} buffers, {} posted target, {} in \
             use now, peak {} in use, ENOBUFS {} ({} re-arms), {} bundles; backpressure pauses \
             {}, quota pauses {}, peak unsent {} bytes; spilled {} chunks ({} bytes); accept \
             pauses {}; {} receive completions, {} completions in all, {} enters",
            self.accepted,
            self.active,
            self.closed,
            self.refused_limit,
            self.upstream_failed,
            self.connect_timeouts,
            self.resets,
            self.idle_closed,
            self.forced,
            self.bytes_up,
            self.bytes_down,
            self.pool.buffers,
            self.pool.posted_target,
            self.pool.with_app,
            self.pool.peak_with_app,
            self.pool.enobufs,
            d.rearms_after_wait,
            self.pool.bundles,
            self.backpressure_pauses,
            d.quota_pauses,
            self.peak_unsent,
            d.spilled_chunks,
            d.spilled_bytes,
            d.accept_pauses,
            self.pool.completions,
            d.completions,
            d.enters,
        )
    }
}

impl fmt::Display for ProxyStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "total: {}", self.total())?;
        for (i, t) in self.threads.iter().enumerate() {
            writeln!(f, "thread {i}: {t}")?;
        }
        Ok(())
    }
}

/// The proxy, running in this process.
pub struct Proxy;

impl Proxy {
    /// Checks the configuration, binds the listeners, starts one worker per thread and returns
    /// once all of them have their driver and pool (or the first error).
    pub fn start(cfg: Config) -> Result<ProxyHandle, Box<dyn std::error::Error + Send + Sync>> {
        cfg.check()?;
        let listeners = net::reuseport_listeners(cfg.listen, cfg.threads)
            .map_err(|e| format!("listen on {}: {e}", cfg.listen))?;
        let addr = listeners[0].local_addr()?;
        let shared = Arc::new(Shared {
            state: AtomicU8::new(RUN),
            dump: (0..cfg.threads).map(|_| AtomicBool::new(false)).collect(),
            active: AtomicUsize::new(0),
            stats: (0..cfg.threads)
                .map(|_| Mutex::new(ThreadStats::default()))
                .collect(),
        });
        let (tx, rx) = mpsc::channel();
        let mut handle = ProxyHandle {
            addr,
            shared: Arc::clone(&shared),
            threads: Vec::new(),
            wakers: Vec::new(),
            incremental: Incremental::Off,
            bundles: false,
        };
        for (id, listener) in listeners.into_iter().enumerate() {
            let (cfg, shared, tx) = (cfg.clone(), Arc::clone(&shared), tx.clone());
            let t = std::thread::Builder::new()
                .name(format!("proxy-{id}"))
                .spawn(
                    move || match worker::Worker::new(id, &cfg, listener, shared, &tx) {
                        Some(w) => {
                            drop(tx);
                            w.run()
                        }
                        None => Ok(()),
                    },
                )?;
            handle.threads.push(t);
        }
        drop(tx);
        for _ in 0..cfg.threads {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(s)) => {
                    handle.wakers.push(s.waker);
                    handle.incremental = s.incremental;
                    handle.bundles = s.bundles;
                }
                // Dropping the handle stops the workers that did start.
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err("a worker did not start".into()),
            }
        }
        Ok(handle)
    }
}

/// A running proxy. Dropping it resets every connection and waits for the workers.
pub struct ProxyHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    wakers: Vec<DriverWaker>,
    incremental: Incremental,
    bundles: bool,
}

impl ProxyHandle {
    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters as of each worker's last batch.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            threads: self
                .shared
                .stats
                .iter()
                .map(|s| *s.lock().unwrap_or_else(|e| e.into_inner()))
                .collect(),
        }
    }

    /// The pool mode the kernel gave (incremental consumption by the kernel, emulated, or
    /// off), and whether receives are bundles.
    pub fn mode(&self) -> (Incremental, bool) {
        (self.incremental, self.bundles)
    }

    fn signal(&self, state: u8) {
        self.shared.state.fetch_max(state, Ordering::AcqRel);
        for w in &self.wakers {
            w.wake();
        }
    }

    /// Each worker prints the state of every connection (diagnostics).
    pub fn dump(&self) {
        for d in &self.shared.dump {
            d.store(true, Ordering::Release);
        }
        for w in &self.wakers {
            w.wake();
        }
    }

    /// Graceful shutdown: stop accepting, let open connections finish (up to the drain
    /// timeout), then stop.
    pub fn shutdown(&self) {
        self.signal(DRAIN);
    }

    /// Resets every connection now and stops.
    pub fn force(&self) {
        self.signal(FORCE);
    }

    /// Whether every worker has stopped.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits up to `timeout` for the workers to stop; the first worker error, if any.
    pub fn join(mut self, timeout: Duration) -> io::Result<ProxyStats> {
        let deadline = Instant::now() + timeout;
        while !self.is_finished() {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "proxy workers did not stop in time",
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a proxy worker panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result.map(|()| self.stats())
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.force();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGUSR1 in this thread (and the workers it spawns later) and
/// returns a signalfd that reports them: no work happens in a signal handler.
fn signal_fd() -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: sigset_t is plain old data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; these calls only edit it and this thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: `set` is valid; -1 asks for a new signalfd.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits up to `ms` for a signal on the signalfd.
fn next_signal(fd: &OwnedFd, ms: i32) -> Option<i32> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
        return None;
    }
    // SAFETY: signalfd_siginfo is plain old data; read fills it.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads at most `size` bytes into `info`.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            &mut info as *mut _ as *mut libc::c_void,
            size,
        )
    };
    (n as usize == size).then_some(info.ssi_signo as i32)
}

pub fn run(args: Args) -> crate::CliResult {
    let cfg = Config::from_args(&args)?;
    let nofile = net::raise_nofile_limit();
    let signals = signal_fd()?;
    let proxy = Proxy::start(cfg.clone()).map_err(|e| e.to_string())?;
    let (incremental, bundles) = proxy.mode();
    eprintln!(
        "bufring proxy: listening on {}, upstream {}, {} thread(s), {} buffers of {} bytes per \
         thread, incremental {}, bundles {}, max unsent {} bytes, connect timeout {}, idle \
         timeout {}, open files limit {nofile}",
        proxy.local_addr(),
        cfg.upstream,
        cfg.threads,
        cfg.buffers,
        cfg.buf_size,
        match incremental {
            Incremental::Kernel => "on (kernel)",
            Incremental::Emulated => "emulated",
            _ => "off",
        },
        if bundles { "on" } else { "off" },
        cfg.max_unsent,
        secs(cfg.connect_timeout),
        secs(cfg.idle_timeout),
    );
    let mut stopping = false;
    while !proxy.is_finished() {
        match next_signal(&signals, 200) {
            Some(libc::SIGUSR1) => {
                eprint!("bufring proxy statistics\n{}", proxy.stats());
                if std::env::var_os("BUFRING_PROXY_DEBUG").is_some() {
                    proxy.dump();
                }
            }
            Some(libc::SIGINT | libc::SIGTERM | libc::SIGHUP) if !stopping => {
                stopping = true;
                eprintln!("bufring proxy: shutting down (stop accepting, drain)");
                proxy.shutdown();
            }
            Some(libc::SIGINT | libc::SIGTERM | libc::SIGHUP) => {
                eprintln!("bufring proxy: resetting every connection now");
                proxy.force();
            }
            _ => {}
        }
    }
    let stats = proxy.join(Duration::from_secs(30))?;
    eprint!("bufring proxy: exit statistics\n{stats}");
    Ok(())
}

fn secs(t: Option<Duration>) -> String {
    t.map_or("none".into(), |t| format!("{} s", t.as_secs_f64()))
}
