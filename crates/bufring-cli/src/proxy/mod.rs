//! `bufring proxy`: a TCP proxy on provided buffers. One io_uring, one [`bufring::Pool`] and
//! one SO_REUSEPORT listener per thread; multishot receives on both sides of every connection
//! take a buffer only when data arrives, and each piece is sent on straight from its chunk.
//!
//! [`Proxy::start`] runs the proxy in the calling process (tests use it); [`run`] is the
//! command: it adds signals (SIGINT/SIGTERM drain and exit, SIGUSR1 prints statistics).

mod conn;
mod net;
mod worker;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bufring::{Incremental, PoolStats};

/// Options of `bufring proxy`.
#[derive(clap::Args)]
pub struct Args {
    /// Address to accept clients on (e.g. 127.0.0.1:8080).
    #[arg(long)]
    listen: SocketAddr,
    /// Address to forward every connection to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Worker threads, each with its own io_uring and pool (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Incremental consumption: `auto` uses it when the kernel has it.
    #[arg(long, value_enum, default_value_t = IncrementalArg::Auto)]
    incremental: IncrementalArg,
    /// Receive with multishot bundle receives: one completion hands over every buffer the
    /// data filled (an error on kernels without bundles).
    #[arg(long)]
    bundles: bool,
    /// Bytes per buffer.
    #[arg(long, default_value_t = 64 * 1024)]
    buf_size: u32,
    /// Buffers per thread.
    #[arg(long, default_value_t = 1024)]
    buffers: u32,
    /// Connections open at once (all threads); more are closed as soon as accepted.
    #[arg(long, default_value_t = 100_000)]
    max_connections: usize,
    /// Unsent bytes queued per direction before that direction's receive pauses.
    #[arg(long, default_value_t = 256 * 1024)]
    max_unsent: usize,
    /// Pause receives by cancelling them instead of capping them (the path for kernels
    /// before 6.17; for tests and comparisons).
    #[arg(long, hide = true)]
    no_multishot_cap: bool,
    /// Seconds to let connections finish after SIGINT/SIGTERM before closing them.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
}

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
    /// The pool mode this means on the running kernel.
    pub fn resolve(self) -> Incremental {
        match self {
            IncrementalArg::On => Incremental::Kernel,
            IncrementalArg::Off => Incremental::Off,
            IncrementalArg::Emulated => Incremental::Emulated,
            IncrementalArg::Auto => Incremental::Auto,
        }
    }
}

/// Everything a proxy needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub threads: usize,
    pub incremental: Incremental,
    pub buf_size: u32,
    pub buffers: u32,
    pub max_connections: usize,
    /// Backpressure bound: unsent bytes queued per direction before its receive pauses.
    pub max_unsent: usize,
    /// How long a graceful shutdown waits for connections to end by themselves.
    pub drain_timeout: Duration,
    /// Cap multishot receives at the backpressure room (Linux 6.17; found out at run time).
    /// Off: pause by cancelling the receive, then one buffer at a time (older kernels' path).
    pub multishot_cap: bool,
    /// Multishot bundle receives (one completion, several buffers). The pool checks that the
    /// kernel has them.
    pub bundles: bool,
}

impl Config {
    /// Defaults for the two addresses: one thread per core, 1024 buffers of 64 KiB per thread,
    /// incremental consumption when the kernel has it.
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> Self {
        Config {
            listen,
            upstream,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            incremental: IncrementalArg::Auto.resolve(),
            buf_size: 64 * 1024,
            buffers: 1024,
            max_connections: 100_000,
            max_unsent: 256 * 1024,
            drain_timeout: Duration::from_secs(10),
            multishot_cap: true,
            bundles: false,
        }
    }
}

pub(crate) const RUN: u8 = 0;
pub(crate) const DRAIN: u8 = 1;
pub(crate) const FORCE: u8 = 2;

/// What the handle and the workers share.
pub(crate) struct Shared {
    pub state: AtomicU8,
    /// Print every connection's state (diagnostics).
    pub dump: Vec<std::sync::atomic::AtomicBool>,
    /// Connections open, all threads (for `max_connections`).
    pub active: AtomicUsize,
    /// One eventfd per worker: a write wakes it to look at `state`.
    pub wakers: Vec<OwnedFd>,
    /// Each worker's counters, refreshed after every batch of completions.
    pub stats: Vec<Mutex<ThreadStats>>,
}

/// One worker's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadStats {
    pub accepted: u64,
    pub active: u64,
    pub closed: u64,
    /// Connections closed at once because `max_connections` were open.
    pub refused_limit: u64,
    /// Upstream connections that failed (refused, unreachable).
    pub upstream_failed: u64,
    /// Pairs closed because one side reset or failed.
    pub resets: u64,
    pub accept_errors: u64,
    /// Bytes client → upstream.
    pub bytes_up: u64,
    /// Bytes upstream → client.
    pub bytes_down: u64,
    /// Receives re-armed after the ring ran dry.
    pub enobufs_rearms: u64,
    /// Receives waiting for buffers right now.
    pub waiting: u64,
    /// Receives paused because the other side had too much unsent.
    pub backpressure_pauses: u64,
    /// The most unsent bytes one direction ever had queued.
    pub peak_unsent: u64,
    /// Whether multishot receives carry a byte cap (1) or are paused by cancels (0).
    pub multishot_cap: u64,
    /// Receive completions that brought more than one buffer (bundles).
    pub multi_buffer_bundles: u64,
    /// The most buffers one receive completion brought.
    pub max_bundle_buffers: u64,
    pub pool: PoolStats,
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
            t.resets += s.resets;
            t.accept_errors += s.accept_errors;
            t.bytes_up += s.bytes_up;
            t.bytes_down += s.bytes_down;
            t.enobufs_rearms += s.enobufs_rearms;
            t.waiting += s.waiting;
            t.backpressure_pauses += s.backpressure_pauses;
            t.peak_unsent = t.peak_unsent.max(s.peak_unsent);
            t.multishot_cap = t.multishot_cap.max(s.multishot_cap);
            t.multi_buffer_bundles += s.multi_buffer_bundles;
            t.max_bundle_buffers = t.max_bundle_buffers.max(s.max_bundle_buffers);
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
        }
        t
    }
}

impl fmt::Display for ThreadStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connections {} accepted, {} active, {} closed, {} refused at the limit, {} upstream \
             failed, {} reset; bytes client->upstream {}, upstream->client {}; pool {} buffers, \
             {} in use now, peak {} in use, utilization {:.2}, ENOBUFS {} ({} re-arms, {} \
             waiting); backpressure pauses {}, peak unsent {} bytes; bundles {} ({} of several \
             buffers, at most {})",
            self.accepted,
            self.active,
            self.closed,
            self.refused_limit,
            self.upstream_failed,
            self.resets,
            self.bytes_up,
            self.bytes_down,
            self.pool.buffers,
            self.pool.with_app,
            self.pool.peak_with_app,
            self.pool.utilization(),
            self.pool.enobufs,
            self.enobufs_rearms,
            self.waiting,
            self.backpressure_pauses,
            self.peak_unsent,
            self.pool.bundles,
            self.multi_buffer_bundles,
            self.max_bundle_buffers,
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
    /// Binds the listeners, starts one worker per thread and returns once all of them have
    /// their ring and pool (or the first error).
    pub fn start(cfg: Config) -> Result<ProxyHandle, Box<dyn std::error::Error + Send + Sync>> {
        if cfg.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        let listeners = net::reuseport_listeners(cfg.listen, cfg.threads)
            .map_err(|e| format!("listen on {}: {e}", cfg.listen))?;
        let addr = listeners[0].local_addr()?;
        let wakers = (0..cfg.threads)
            .map(|_| net::eventfd())
            .collect::<io::Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            state: AtomicU8::new(RUN),
            dump: (0..cfg.threads)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            active: AtomicUsize::new(0),
            wakers,
            stats: (0..cfg.threads)
                .map(|_| Mutex::new(ThreadStats::default()))
                .collect(),
        });
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for (id, listener) in listeners.into_iter().enumerate() {
            let (cfg, shared, tx) = (cfg.clone(), Arc::clone(&shared), tx.clone());
            let t = std::thread::Builder::new()
                .name(format!("proxy-{id}"))
                .spawn(move || {
                    let w = match worker::Worker::new(id, &cfg, listener, shared) {
                        Ok(w) => w,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let _ = tx.send(Ok(()));
                    drop(tx);
                    w.run()
                })?;
            threads.push(t);
        }
        drop(tx);
        let handle = ProxyHandle {
            addr,
            shared,
            threads,
        };
        for _ in 0..cfg.threads {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err("a worker did not start".into()),
            }
        }
        Ok(handle)
    }
}

/// A running proxy. Dropping it closes every connection and waits for the workers.
pub struct ProxyHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<io::Result<()>>>,
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

    fn signal(&self, state: u8) {
        self.shared.state.fetch_max(state, Ordering::AcqRel);
        for w in &self.shared.wakers {
            net::wake(w.as_raw_fd());
        }
    }

    /// Each worker prints the state of every connection (diagnostics).
    pub fn dump(&self) {
        for d in &self.shared.dump {
            d.store(true, Ordering::Release);
        }
        for w in &self.shared.wakers {
            net::wake(w.as_raw_fd());
        }
    }

    /// Graceful shutdown: stop accepting, let open connections finish (up to the drain
    /// timeout), then stop.
    pub fn shutdown(&self) {
        self.signal(DRAIN);
    }

    /// Closes every connection now and stops.
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

/// Blocks SIGINT, SIGTERM and SIGUSR1 in this thread (and the workers it spawns later) and
/// returns a signalfd that reports them: no work happens in a signal handler.
fn signal_fd() -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: sigset_t is plain old data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; these calls only edit it and this thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1] {
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
    if args.buf_size == 0 || args.buffers == 0 {
        return Err("--buf-size and --buffers must be at least 1".into());
    }
    if !(args.drain_timeout >= 0.0 && args.drain_timeout < 1e9) {
        return Err("--drain-timeout must be a number of seconds".into());
    }
    let mut cfg = Config::new(args.listen, args.upstream);
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    cfg.incremental = args.incremental.resolve();
    cfg.buf_size = args.buf_size;
    cfg.buffers = args.buffers;
    cfg.max_connections = args.max_connections;
    cfg.max_unsent = args.max_unsent;
    cfg.drain_timeout = Duration::from_secs_f64(args.drain_timeout);
    cfg.multishot_cap = !args.no_multishot_cap;
    cfg.bundles = args.bundles;
    let nofile = net::raise_nofile_limit();
    let signals = signal_fd()?;
    let proxy = Proxy::start(cfg.clone()).map_err(|e| e.to_string())?;
    eprintln!(
        "bufring proxy: listening on {}, upstream {}, {} thread(s), {} buffers of {} bytes per \
         thread, incremental {}, bundles {}, open files limit {nofile}",
        proxy.local_addr(),
        cfg.upstream,
        cfg.threads,
        cfg.buffers,
        cfg.buf_size,
        if cfg.incremental == Incremental::Kernel {
            "on"
        } else {
            "off"
        },
        if cfg.bundles { "on" } else { "off" },
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
            Some(libc::SIGINT | libc::SIGTERM) if !stopping => {
                stopping = true;
                eprintln!("bufring proxy: shutting down (stop accepting, drain)");
                proxy.shutdown();
            }
            Some(libc::SIGINT | libc::SIGTERM) => {
                eprintln!("bufring proxy: closing every connection now");
                proxy.force();
            }
            _ => {}
        }
    }
    let stats = proxy.join(Duration::from_secs(30))?;
    eprint!("bufring proxy: exit statistics\n{stats}");
    Ok(())
}
