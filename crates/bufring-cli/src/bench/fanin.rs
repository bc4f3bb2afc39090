//! `bench fanin`: many connections, each sending small messages now and then. One sender walks
//! the connections in random order writing one message to each, so at any instant most
//! connections are idle: per-connection buffers sit unused while a shared pool serves them all.
//! The connections are made once and shared by every contender and round.
//! Figures: messages/s, CPU per message, receive-buffer memory committed, peak RSS, the pools'
//! resident pages, utilization, ENOBUFS. The `driver` contenders receive through bufring's safe
//! driver and its buffer policy; their receive memory is what the pool has resident (see
//! [`driver_receive`]).

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bufring::{Completion, Incremental, Pool};
use io_uring::{opcode, types, IoUring};

use super::{interleave, size_name, sys, BenchResult, Common, Contender, Figure, Scenario};

const KIB: usize = 1024;
const MIB: f64 = 1024.0 * 1024.0;
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
const CANCELLED: u64 = u64::MAX;

/// Options of `bench fanin`.
#[derive(clap::Args)]
pub struct Args {
    /// Connections (default 10000, 2000 with --quick).
    #[arg(long)]
    conns: Option<usize>,
    /// Message size in bytes (default 512).
    #[arg(long, default_value_t = 512)]
    msg_size: usize,
    /// Messages per round (default 20 per connection).
    #[arg(long)]
    messages: Option<usize>,
    /// Buffer memory of each pool contender (default 4M).
    #[arg(long, value_parser = super::stream::parse_size)]
    pool_mem: Option<usize>,
}

/// The per-connection buffer of `tokio` and `uring-fixed`, and the classic pool's buffer.
const CONN_BUF: usize = 16 * KIB;
/// The incremental pool's buffer.
const INC_BUF: usize = 64 * KIB;

#[derive(Clone, Copy)]
enum Recv {
    /// tokio TcpStream per connection, a 16 KiB buffer each (current-thread runtime).
    Tokio,
    /// The same runtime and a task per connection, each reading a `bufring_tokio::RecvStream`
    /// from one shared `bufring_tokio::Uring` (its driver thread, one incremental pool).
    TokioBufring,
    /// The same with the `Uring`'s driver as a task of the runtime (`Builder::build_local`,
    /// kernels from 6.13) instead of a thread.
    TokioBufringLocal,
    /// io_uring recv per connection into its own 16 KiB buffer.
    UringFixed,
    /// bufring pool, multishot recv per connection, shared buffers of `buf_len`.
    Pool { mode: Incremental, buf_len: usize },
    // `pool-inc-bundle` and `pool-emulated` go here once bundles and Incremental::Emulated land.
    /// bufring's safe driver (`bufring::driver::Driver`) over the same pool: multishot recv per
    /// connection, receive queues read per `Readable` event, elastic posting.
    Driver { mode: Incremental, buf_len: usize },
}

impl Recv {
    fn name(self) -> String {
        let (base, mode) = match self {
            Recv::Tokio => return "tokio".into(),
            Recv::TokioBufring => return "tokio-bufring".into(),
            Recv::TokioBufringLocal => return "tokio-bufring-local".into(),
            Recv::UringFixed => return "uring-fixed".into(),
            Recv::Pool { mode, .. } => ("pool", mode),
            Recv::Driver { mode, .. } => ("driver", mode),
        };
        match mode {
            Incremental::Off => base.into(),
            _ => format!("{base}-inc"),
        }
    }
}

/// Options of the hidden `bench fanin-sender`: the sending side of `bench fanin`, run by it as
/// a child process so that each process needs only one descriptor per connection.
#[derive(clap::Args)]
pub struct SenderArgs {
    /// The receiver's port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// Connections to make.
    #[arg(long)]
    conns: usize,
    /// Message size.
    #[arg(long)]
    msg_size: usize,
}

/// The receiving ends of the connections, made once, and the child process that sends.
struct Conns {
    rx: Vec<TcpStream>,
    sender: Sender,
}

struct FaninContender {
    recv: Recv,
    conns: Rc<RefCell<Conns>>,
    msg_size: usize,
    messages: usize,
    pool_mem: usize,
    round: u64,
}

/// What a receiver reports besides the byte count.
#[derive(Default)]
struct RecvOut {
    committed: usize,
    /// Pool contenders: the pool's pages resident at the end (mincore), the same measure for
    /// all of them (a 512 B message touches one page of a classic 16 KiB buffer).
    resident: Option<u64>,
    utilization: Option<f64>,
    enobufs: u64,
}

impl Contender for FaninContender {
    fn name(&self) -> String {
        self.recv.name()
    }

    fn run_once(&mut self) -> BenchResult<Vec<Figure>> {
        self.round += 1;
        let (msg_size, messages, seed) = (self.msg_size, self.messages, self.round);
        sys::pin(sys::receiver_cpu());
        sys::reset_peak_rss();
        let mut conns = self.conns.borrow_mut();
        let conns = &mut *conns;
        let fds: Vec<RawFd> = conns.rx.iter().map(|s| s.as_raw_fd()).collect();
        let want = (msg_size * messages) as u64;
        let mut go = Clock::new(&mut conns.sender, messages, seed);
        let r = match self.recv {
            Recv::Tokio => tokio_receive(&fds, want, &mut go),
            Recv::TokioBufring => {
                tokio_bufring_receive(&mut conns.rx, self.pool_mem, false, want, &mut go)
            }
            Recv::TokioBufringLocal => {
                tokio_bufring_receive(&mut conns.rx, self.pool_mem, true, want, &mut go)
            }
            Recv::UringFixed => uring_fixed(&fds, want, &mut go),
            Recv::Pool { mode, buf_len } => {
                pool_receive(&fds, mode, buf_len, self.pool_mem, want, &mut go)
            }
            Recv::Driver { mode, buf_len } => {
                driver_receive(&fds, mode, buf_len, self.pool_mem, want, &mut go)
            }
        };
        let (secs, cpu) = go.elapsed();
        // The sender's report of this round (it sends everything whatever the receiver does).
        let sent = if go.started { go.sender.done() } else { Ok(()) };
        let out = r?;
        sent?;
        let mut figs = vec![
            Figure::up("msgs_per_s", "msg/s", messages as f64 / secs),
            Figure::down("cpu_us_per_msg", "µs", cpu * 1e6 / messages as f64),
            Figure::down("rx_mem_mib", "MiB", out.committed as f64 / MIB),
            Figure::down(
                "peak_rss_mib",
                "MiB",
                sys::peak_rss().map_or(f64::NAN, |b| b as f64 / MIB),
            ),
        ];
        let resident = out.resident.map(|b| b as f64 / MIB);
        figs.extend(resident.map(|m| Figure::down("rx_resident_mib", "MiB", m)));
        figs.extend(out.utilization.map(|u| Figure::up("utilization", "", u)));
        figs.push(Figure::down("enobufs", "events", out.enobufs as f64));
        Ok(figs)
    }
}

/// The receiver's start line and finish: wall time and the receiving thread's CPU time (the
/// whole process's for receivers with threads of their own).
struct Clock<'a> {
    sender: &'a mut Sender,
    messages: usize,
    seed: u64,
    started: bool,
    t0: Instant,
    cpu0: f64,
    t1: Option<(Instant, f64)>,
    cpu: fn() -> f64,
}

impl<'a> Clock<'a> {
    fn new(sender: &'a mut Sender, messages: usize, seed: u64) -> Self {
        Clock {
            sender,
            messages,
            seed,
            started: false,
            t0: Instant::now(),
            cpu0: 0.0,
            t1: None,
            cpu: sys::thread_cpu_secs,
        }
    }

    /// Set up: start the clocks and tell the sender to go.
    fn start(&mut self) -> std::io::Result<()> {
        self.started = true;
        self.cpu0 = (self.cpu)();
        self.t0 = Instant::now();
        self.sender.go(self.messages, self.seed)
    }

    /// Everything received (teardown is not measured).
    fn stop(&mut self) {
        self.t1 = Some((Instant::now(), (self.cpu)()));
    }

    /// Wall seconds and CPU seconds between start and stop.
    fn elapsed(&self) -> (f64, f64) {
        let (t1, cpu1) = self.t1.unwrap_or_else(|| (Instant::now(), (self.cpu)()));
        (
            t1.duration_since(self.t0).as_secs_f64().max(1e-9),
            cpu1 - self.cpu0,
        )
    }
}

/// The child process that sends: `bufring bench fanin-sender`, driven over its stdin/stdout.
struct Sender {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Sender {
    /// Starts the child and accepts its `n` connections.
    fn spawn(n: usize, msg_size: usize) -> BenchResult<Conns> {
        let need = (n + 256) as u64;
        let got = sys::raise_nofile(need);
        if got < need {
            return Err(format!(
                "{n} connections need {need} descriptors; RLIMIT_NOFILE allows {got} (use --conns)"
            )
            .into());
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        // SAFETY: listen() on our own socket to raise the backlog; no memory involved.
        unsafe { libc::listen(listener.as_raw_fd(), 4096) };
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", "fanin-sender", "--port", &port.to_string()])
            .args([
                "--conns",
                &n.to_string(),
                "--msg-size",
                &msg_size.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut sender = Sender {
            child,
            stdin,
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut rx = Vec::with_capacity(n);
        while rx.len() < n {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)?;
                    rx.push(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline || sender.child.try_wait()?.is_some() {
                        return Err("the sender process did not connect".into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e.into()),
            }
        }
        sender.expect("ready")?;
        Ok(Conns { rx, sender })
    }

    fn expect(&mut self, what: &str) -> BenchResult<()> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.trim() != what {
            return Err(format!("sender: {}", line.trim()).into());
        }
        Ok(())
    }

    fn go(&mut self, messages: usize, seed: u64) -> std::io::Result<()> {
        let stdin = self.stdin.as_mut().ok_or(std::io::ErrorKind::BrokenPipe)?;
        writeln!(stdin, "go {messages} {seed}")?;
        stdin.flush()
    }

    fn done(&mut self) -> BenchResult<()> {
        self.expect("done")
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        // End of input tells the child to close its connections and exit.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bench fanin-sender`: connects, says "ready", then for every "go MESSAGES SEED" line writes
/// MESSAGES messages in random passes over the connections (one message per connection per
/// pass) and says "done". Ends at end of input.
pub fn sender_main(args: &SenderArgs) -> crate::CliResult {
    sys::pin(sys::sender_cpu());
    sys::raise_nofile((args.conns + 64) as u64);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    let mut tx = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        let t = TcpStream::connect(addr)?;
        t.set_nodelay(true)?;
        t.set_write_timeout(Some(RUN_TIMEOUT))?;
        tx.push(t);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let msg = vec![0x5au8; args.msg_size];
    let mut order: Vec<usize> = (0..tx.len()).collect();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        let (Some("go"), Some(messages), Some(seed)) = (words.next(), words.next(), words.next())
        else {
            return Err(format!("unexpected command {line:?}").into());
        };
        let (messages, seed): (usize, u64) = (messages.parse()?, seed.parse()?);
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move || {
            // xorshift64
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut left = messages;
        let mut result = Ok(());
        while left > 0 && result.is_ok() {
            for i in (1..order.len()).rev() {
                let j = (next() % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
            for &c in order.iter().take(left) {
                if let Err(e) = (&tx[c]).write_all(&msg) {
                    result = Err(e);
                    break;
                }
            }
            left = left.saturating_sub(order.len());
        }
        match result {
            Ok(()) => writeln!(out, "done")?,
            Err(e) => writeln!(out, "error: {e}")?,
        }
        out.flush()?;
    }
    Ok(())
}

fn tokio_receive(fds: &[RawFd], want: u64, go: &mut Clock) -> BenchResult<RecvOut> {
    use std::cell::Cell;
    use std::os::fd::{FromRawFd, IntoRawFd};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let got = Rc::new(Cell::new(0u64));
    let done = Rc::new(tokio::sync::Notify::new());
    let local = tokio::task::LocalSet::new();
    // tokio borrows our descriptors (a duplicate each would need twice the descriptor limit)
    // and gives them back, deregistered and open, at the end.
    let mut streams = Vec::with_capacity(fds.len());
    let r: BenchResult<()> = (|| {
        let _g = rt.enter();
        for &fd in fds {
            sys::set_nonblocking(fd, true)?;
            // SAFETY: the descriptor is ours and stays open: every stream is turned back into a
            // raw fd below instead of being closed.
            let std = unsafe { TcpStream::from_raw_fd(fd) };
            let s = Rc::new(tokio::net::TcpStream::from_std(std)?);
            streams.push(Rc::clone(&s));
            let (got, done) = (Rc::clone(&got), Rc::clone(&done));
            local.spawn_local(async move {
                let mut buf = vec![0u8; CONN_BUF];
                loop {
                    if s.readable().await.is_err() {
                        return;
                    }
                    match s.try_read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            got.set(got.get() + n as u64);
                            if got.get() >= want {
                                done.notify_one();
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
            });
        }
        Ok(())
    })();
    let r = r.and_then(|()| {
        go.start()?;
        let r = rt.block_on(
            local.run_until(async { tokio::time::timeout(RUN_TIMEOUT, done.notified()).await }),
        );
        go.stop();
        r.map_err(|_| "tokio receive timed out".into())
    });
    // Cancel the tasks (dropping their handles on the streams), then take the fds back.
    drop(local);
    {
        let _g = rt.enter();
        for s in streams {
            match Rc::try_unwrap(s) {
                Ok(s) => {
                    // A failed deregistration closes the fd: the next contender then fails
                    // loudly with EBADF.
                    if let Ok(std) = s.into_std() {
                        let _ = std.into_raw_fd();
                    }
                }
                // Still shared (cannot happen once the tasks are gone): never close it.
                Err(s) => std::mem::forget(s),
            }
        }
    }
    drop(rt);
    for &fd in fds {
        sys::set_nonblocking(fd, false)?;
    }
    r?;
    Ok(RecvOut {
        committed: fds.len() * CONN_BUF,
        ..RecvOut::default()
    })
}

/// `tokio_receive`'s runtime and task per connection, each task reading its connection
/// through a `bufring_tokio::RecvStream` of one shared `Uring` (one driver thread, one
/// incremental pool of `pool_mem` in 64 KiB buffers, rings of the raw contenders' sizes).
///
/// - Descriptors: a duplicate per connection for the whole round would need twice the
///   descriptors (20,256 for 10,000 connections, over a hard limit of 20,000 here). So the
///   streams are lent the connections' own fds, and [`hand_back`] takes them back after the
///   round with `RecvStream::release`. Then the tasks go, and the `Uring` (its drop stops the
///   driver, which cancels what is left and waits); the round checks that the process has as
///   many descriptors open as before it.
/// - CPU per message is the whole process's CPU time (the tokio thread and the driver thread,
///   which inherits the receiver's CPU pinning), not the receiving thread's alone.
/// - `in_runtime`: the driver is a task of the round's runtime (`Builder::build_local`), not a
///   thread.
/// - Receive memory: `UringStats` has no resident bytes, so the round asks `mincore` about the
///   address range its pool chunks covered (see [`Span`]); peak RSS covers everything else.
fn tokio_bufring_receive(
    rx: &mut [TcpStream],
    pool_mem: usize,
    in_runtime: bool,
    want: u64,
    go: &mut Clock,
) -> BenchResult<RecvOut> {
    use std::cell::Cell;
    use std::future::Future;
    use std::task::Poll;
    let need = (rx.len() + 256) as u64;
    let limit = sys::raise_nofile(need);
    if limit < need {
        return Err(format!(
            "tokio-bufring needs {need} descriptors; RLIMIT_NOFILE allows {limit} (use --conns)"
        )
        .into());
    }
    let fds_before = open_fds();
    let (sq, cq) = ring_sizes(rx.len());
    let builder = bufring_tokio::Uring::builder()
        .buffers((pool_mem / INC_BUF).max(1))
        .buf_len(INC_BUF)
        .driver(
            bufring::driver::Driver::builder()
                .entries(sq)
                .cq_entries(cq),
        );
    let (rt, local, uring) = super::tokio_uring(builder, in_runtime)?;
    let got = Rc::new(Cell::new(0u64));
    let done = Rc::new(tokio::sync::Notify::new());
    let span = Rc::new(Span::default());
    // The streams, where `hand_back` can take them from the tasks.
    let streams: Rc<RefCell<Vec<Option<bufring_tokio::RecvStream>>>> =
        Rc::new(RefCell::new(Vec::with_capacity(rx.len())));
    let r: BenchResult<RecvOut> = (|| {
        for (i, s) in rx.iter().enumerate() {
            // SAFETY: lent, not given: the connection's `TcpStream` keeps the number and does
            // not close it while the stream's driver owns it; `hand_back` takes it back with
            // `release` (or gives the connection a duplicate if that fails). (If the driver
            // had died, the failed command closes it: the later rounds then fail with EBADF.)
            let fd = unsafe { OwnedFd::from_raw_fd(s.as_raw_fd()) };
            streams.borrow_mut().push(Some(uring.recv_stream(fd)?));
            let (streams, got, done, span) = (
                Rc::clone(&streams),
                Rc::clone(&got),
                Rc::clone(&done),
                Rc::clone(&span),
            );
            local.spawn_local(async move {
                loop {
                    // `stream.recv().await`, with the stream borrowed only while polled (the
                    // future is cancel-safe; once the stream is taken the task waits for good).
                    let item = std::future::poll_fn(|cx| match streams.borrow_mut()[i].as_mut() {
                        Some(stream) => std::pin::pin!(stream.recv()).poll(cx),
                        None => Poll::Pending,
                    })
                    .await;
                    // An error item (a reset, or the driver thread stopping) ends the task.
                    let Some(Ok(chunk)) = item else { return };
                    span.note(&chunk);
                    got.set(got.get() + chunk.len() as u64);
                    if got.get() >= want {
                        done.notify_one();
                    }
                }
            });
        }
        let stats = || {
            // On the `LocalSet`, where the in-runtime driver task runs.
            rt.block_on(local.run_until(async {
                tokio::time::timeout(Duration::from_secs(10), uring.stats()).await
            }))
            .map_err(|_| "bufring-tokio stats timed out")
        };
        // The driver thread takes commands in order: once it answers this, every stream is open
        // and its receive queued (submitted by the thread's next wait, right after).
        let opened = stats()??.streams;
        if opened != rx.len() {
            return Err(format!("{opened} of {} streams open", rx.len()).into());
        }
        go.cpu = process_cpu_secs;
        go.start()?;
        let r = rt.block_on(
            local.run_until(async { tokio::time::timeout(RUN_TIMEOUT, done.notified()).await }),
        );
        go.stop();
        r.map_err(|_| "tokio-bufring receive timed out")?;
        let stats = stats()??;
        if span.off_pool.get() > 0 {
            eprintln!(
                "bench: tokio-bufring: {} B came in heap copies: rx_mem_mib may miss their pages",
                span.off_pool.get()
            );
        }
        let resident = span.resident()?;
        Ok(RecvOut {
            committed: resident as usize,
            resident: Some(resident),
            utilization: Some(stats.pool.utilization()),
            enobufs: stats.pool.enobufs,
        })
    })();
    if let Err(e) = hand_back(&rt, &local, rx, &streams) {
        // Streams not handed back still own connections' fds: keep them (and the driver
        // thread) alive for good rather than close what the bench still uses.
        std::mem::forget(local);
        std::mem::forget(streams);
        std::mem::forget(uring);
        return Err(format!("taking the connections back from bufring-tokio: {e}").into());
    }
    // The tasks, then the last `Uring` handle: its drop joins the driver thread (at most 5 s).
    drop(local);
    drop(rt);
    drop(uring);
    for s in rx.iter() {
        sys::set_nonblocking(s.as_raw_fd(), false)?;
    }
    let fds_after = open_fds();
    if fds_after != fds_before {
        return Err(format!(
            "descriptors open before the round {fds_before:?}, after it {fds_after:?}: \
             bufring-tokio did not close every fd"
        )
        .into());
    }
    r
}

/// Takes each connection's fd back from its stream with `RecvStream::release`, one at a time
/// on the round's runtime (which the in-runtime driver needs). The fd released is the lent
/// number itself, which the connection's `TcpStream` still owns: it is forgotten, never
/// closed here. A release that fails gives the connection a duplicate made just before it (the
/// driver closes the lent number). Bounded: 5 s per connection.
fn hand_back(
    rt: &tokio::runtime::Runtime,
    local: &tokio::task::LocalSet,
    rx: &mut [TcpStream],
    streams: &RefCell<Vec<Option<bufring_tokio::RecvStream>>>,
) -> BenchResult<()> {
    use std::os::fd::AsFd;
    let n = streams.borrow().len();
    let failed = rt.block_on(local.run_until(async {
        let mut failed = 0usize;
        for (i, conn) in rx.iter_mut().enumerate().take(n) {
            let Some(stream) = streams.borrow_mut()[i].take() else {
                continue;
            };
            let dup = conn.as_fd().try_clone_to_owned()?;
            match tokio::time::timeout(Duration::from_secs(5), stream.release()).await {
                Ok(Ok(released)) => {
                    let _ = released.fd.into_raw_fd();
                    drop(dup);
                }
                _ => {
                    let _ = std::mem::replace(conn, TcpStream::from(dup)).into_raw_fd();
                    failed += 1;
                }
            }
        }
        std::io::Result::Ok(failed)
    }))?;
    if failed > 0 {
        // The connections are all back; the descriptor check after the round tells more.
        eprintln!("bench: tokio-bufring: {failed} releases failed (given duplicates)");
    }
    Ok(())
}

/// User + system CPU seconds of the whole process so far (every thread, ended ones included).
pub(super) fn process_cpu_secs() -> f64 {
    // SAFETY: getrusage writes one rusage struct, which we provide zeroed.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Descriptors open in this process (entries of /proc/self/fd), if readable.
fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// The address range the pool chunks of a round lay in. A fresh pool's pages are resident only
/// where the kernel wrote data, which every chunk of the round shows, and the range lies inside
/// the pool's one mapping; so the resident pages of the range (`mincore`) are the pool's, the
/// measure `Pool::resident_bytes` takes of the whole mapping for the driver contenders.
#[derive(Default)]
struct Span {
    lo: std::cell::Cell<usize>,
    hi: std::cell::Cell<usize>,
    /// Bytes of chunks copied out of the pool (their pool pages are not in the range).
    off_pool: std::cell::Cell<u64>,
}

impl Span {
    fn note(&self, chunk: &bufring::Chunk) {
        if !chunk.in_pool() {
            self.off_pool.set(self.off_pool.get() + chunk.len() as u64);
            return;
        }
        let a = chunk.as_ptr() as usize;
        let b = a + chunk.len();
        if self.hi.get() == 0 || a < self.lo.get() {
            self.lo.set(a);
        }
        self.hi.set(self.hi.get().max(b));
    }

    /// Resident bytes of the pages of the range; call while the pool is alive.
    fn resident(&self) -> std::io::Result<u64> {
        let (lo, hi) = (self.lo.get(), self.hi.get());
        if hi <= lo {
            return Ok(0);
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let (start, end) = (lo / page * page, hi.div_ceil(page) * page);
        let mut vec = vec![0u8; (end - start) / page];
        // SAFETY: the range lies in the pool's mapping, alive while the `Uring` is; `vec` has
        // one byte per page of it.
        let r = unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page as u64)
    }
}

/// The io_uring of the io_uring contenders. With thousands of requests armed, every arrival
/// would otherwise interrupt the receiving thread to run the request's task work; with
/// DEFER_TASKRUN (Linux 6.1) the work waits until the thread asks for completions, which halves
/// the receiver's CPU per message here. Older kernels get a plain ring.
fn big_ring(n: usize) -> std::io::Result<IoUring> {
    let (sq, cq) = ring_sizes(n);
    IoUring::builder()
        .setup_cqsize(cq)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(sq)
        .or_else(|_| IoUring::builder().setup_cqsize(cq).build(sq))
}

/// Submission and completion queue entries of the io_uring contenders for `n` connections.
fn ring_sizes(n: usize) -> (u32, u32) {
    (4096, (2 * n as u32 + 64).next_power_of_two().max(8192))
}

/// Pushes `e`, submitting first when the submission queue is full.
fn push(ring: &mut IoUring, e: &io_uring::squeue::Entry) -> std::io::Result<()> {
    loop {
        // SAFETY: the callers keep the buffers and pools alive until every request ended.
        if unsafe { ring.submission().push(e) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

/// Waits for at least one completion, at most 100 ms.
fn wait(ring: &mut IoUring) -> std::io::Result<()> {
    let ts = types::Timespec::new().nsec(100_000_000);
    let args = types::SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(1, &args) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Cancels every request and waits until `active` of them have ended; `ends` tells whether a
/// CQE ends its request.
fn cancel_all(
    ring: &mut IoUring,
    mut active: usize,
    mut ends: impl FnMut(i32, u32, u64) -> bool,
) -> BenchResult<()> {
    let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
        .build()
        .user_data(CANCELLED);
    push(ring, &e)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut cancel_done = false;
    while active > 0 || !cancel_done {
        if Instant::now() > deadline {
            return Err(format!("{active} requests still active after cancel").into());
        }
        wait(ring)?;
        for cqe in ring.completion() {
            if cqe.user_data() == CANCELLED {
                cancel_done = true;
            } else if ends(cqe.result(), cqe.flags(), cqe.user_data()) {
                active -= 1;
            }
        }
    }
    Ok(())
}

fn uring_fixed(fds: &[RawFd], want: u64, go: &mut Clock) -> BenchResult<RecvOut> {
    let mut ring = big_ring(fds.len())?;
    let mut bufs: Vec<Vec<u8>> = fds.iter().map(|_| vec![0u8; CONN_BUF]).collect();
    let recv = |fd: RawFd, buf: &mut Vec<u8>, i: usize| {
        opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), CONN_BUF as u32)
            .build()
            .user_data(i as u64)
    };
    let r: BenchResult<()> = (|| {
        for (i, &fd) in fds.iter().enumerate() {
            push(&mut ring, &recv(fd, &mut bufs[i], i))?;
        }
        ring.submit()?;
        go.start()?;
        let deadline = Instant::now() + RUN_TIMEOUT;
        let mut got = 0u64;
        let mut again = Vec::new();
        while got < want {
            if Instant::now() > deadline {
                return Err("timed out".into());
            }
            wait(&mut ring)?;
            for cqe in ring.completion() {
                match cqe.result() {
                    n if n > 0 => {
                        got += n as u64;
                        again.push(cqe.user_data() as usize);
                    }
                    0 => return Err("a connection closed".into()),
                    e => return Err(std::io::Error::from_raw_os_error(-e).into()),
                }
            }
            for i in again.drain(..) {
                push(&mut ring, &recv(fds[i], &mut bufs[i], i))?;
            }
        }
        go.stop();
        cancel_all(&mut ring, fds.len(), |_, _, _| true)
    })();
    if let Err(e) = r {
        // Requests may still be in flight: their buffers must stay valid.
        std::mem::forget(bufs);
        std::mem::forget(ring);
        return Err(e);
    }
    Ok(RecvOut {
        committed: fds.len() * CONN_BUF,
        ..RecvOut::default()
    })
}

fn pool_receive(
    fds: &[RawFd],
    mode: Incremental,
    buf_len: usize,
    pool_mem: usize,
    want: u64,
    go: &mut Clock,
) -> BenchResult<RecvOut> {
    let mut ring = big_ring(fds.len())?;
    let count = (pool_mem / buf_len).max(1);
    let mut pool = Pool::builder(0)
        .count(count)
        .buf_len(buf_len)
        .incremental(mode)
        .build(&ring)?;
    let mut enobufs = 0u64;
    let r: BenchResult<()> = (|| {
        for (i, &fd) in fds.iter().enumerate() {
            push(&mut ring, &pool.recv_multishot(fd).user_data(i as u64))?;
        }
        ring.submit()?;
        go.start()?;
        let deadline = Instant::now() + RUN_TIMEOUT;
        let mut got = 0u64;
        let mut rearm = Vec::new();
        // Connections whose request ended with ENOBUFS. Re-arming all of them at once when
        // thousands are waiting would only end most of them with ENOBUFS again (each needs a
        // whole buffer on a classic ring): re-arm at most as many as there are buffers posted.
        let mut starved = std::collections::VecDeque::new();
        let classic = mode == Incremental::Off;
        while got < want {
            if Instant::now() > deadline {
                return Err("timed out".into());
            }
            wait(&mut ring)?;
            for cqe in ring.completion() {
                let i = cqe.user_data() as usize;
                // SAFETY: every request on this ring is a receive from this pool; each CQE is
                // handed over once.
                match unsafe { pool.complete(&cqe)? } {
                    Completion::Data { chunks, more } => {
                        got += chunks.total_len() as u64;
                        if !more {
                            rearm.push(i);
                        }
                    }
                    Completion::NoBuffers => {
                        enobufs += 1;
                        starved.push_back(i);
                    }
                    Completion::EndOfStream => return Err("a connection closed".into()),
                    Completion::Failed(e) => return Err(e.into()),
                }
            }
            pool.publish();
            let posted = pool.stats().in_kernel as usize;
            let budget = if classic || posted == 0 {
                posted
            } else {
                starved.len()
            };
            let n = budget.min(starved.len());
            rearm.extend(starved.drain(..n));
            for i in rearm.drain(..) {
                push(&mut ring, &pool.recv_multishot(fds[i]).user_data(i as u64))?;
            }
        }
        go.stop();
        let pool = &mut pool;
        cancel_all(&mut ring, fds.len() - starved.len(), |res, flags, _| {
            // Whatever still arrives is accounted for; the request ends without F_MORE.
            // SAFETY: as above (the cancel's own CQE is not handed over).
            let _ = unsafe { pool.complete(bufring::Cqe::new(res, flags)) };
            flags & 2 == 0
        })
    })();
    if let Err(e) = r {
        std::mem::forget(pool);
        std::mem::forget(ring);
        return Err(e);
    }
    Ok(RecvOut {
        committed: count * buf_len,
        resident: Some(pool.resident_bytes()?),
        utilization: Some(pool.stats().utilization()),
        enobufs,
    })
}

/// The driver over a pool like `pool_receive`'s (`pool_mem` of `buf_len` buffers), with the
/// driver's policy at its defaults (elastic posting, quotas, first-come re-arming) and rings of
/// the raw contenders' sizes.
///
/// Receive memory (`rx_mem_mib`): `pool` and `pool-inc` report the pool they set up
/// (`count * buf_len`, every buffer posted for the kernel to fill), `tokio` and `uring-fixed`
/// their per-connection buffers. The driver posts a few buffers at first and more only when
/// receives run dry, and the pool's mapping costs RAM only where touched: its figure is the
/// pool's resident pages once the last message is read (mincore). That is the round's peak, not
/// a trimmed snapshot: pages go back only after a whole elastic window (1 s) parked, longer than
/// a round. Pages are finer than buffers (a 512 B message touches one page of a 16 KiB buffer),
/// so the raw pools report the same measure too (`rx_resident_mib`), and `peak_rss_mib` covers
/// every contender alike.
fn driver_receive(
    fds: &[RawFd],
    mode: Incremental,
    buf_len: usize,
    pool_mem: usize,
    want: u64,
    go: &mut Clock,
) -> BenchResult<RecvOut> {
    use bufring::driver::{Driver, Event, Received};
    let (sq, cq) = ring_sizes(fds.len());
    let mut driver = Driver::builder().entries(sq).cq_entries(cq).build()?;
    let pool = driver.add_pool(
        Pool::builder(0)
            .count((pool_mem / buf_len).max(1))
            .buf_len(buf_len)
            .incremental(mode),
    )?;
    // The driver owns the connections for the round and hands each back with `release`
    // (its receive cancelled and ended, so none is left to take the next round's data).
    let sockets: Vec<_> = fds
        .iter()
        // SAFETY: the connection's fd is the driver's until it is released below, on every
        // path; `into_raw_fd` then gives ownership back to the connection's `TcpStream`.
        .map(|&fd| driver.socket(unsafe { OwnedFd::from_raw_fd(fd) }))
        .collect();
    let mut round = || -> BenchResult<u64> {
        for &s in &sockets {
            driver.recv(s, pool)?;
        }
        // Submits the receives before the clock starts.
        driver.poll()?;
        go.start()?;
        let deadline = Instant::now() + RUN_TIMEOUT;
        let mut got = 0u64;
        while got < want {
            if Instant::now() > deadline {
                return Err("timed out".into());
            }
            driver.run_once(Some(Duration::from_millis(100)))?;
            while let Some(event) = driver.next_event() {
                let Event::Readable { socket } = event else {
                    continue;
                };
                while let Some(r) = driver.read(socket)? {
                    match r {
                        Received::Data(chunk) => got += chunk.len() as u64,
                        Received::End => return Err("a connection closed".into()),
                        Received::Error(e) => return Err(e.into()),
                    }
                }
            }
        }
        go.stop();
        Ok(got)
    };
    let result = round();
    let pool = driver.pool(pool)?;
    let (stats, resident) = (pool.stats(), pool.resident_bytes()?);
    for s in sockets {
        match driver.release(s, Duration::from_secs(5)) {
            Ok(fd) => {
                let _ = fd.into_raw_fd();
            }
            Err(e) => {
                // The driver would close a connection the bench still owns: keep it (and its
                // requests) alive for good instead.
                std::mem::forget(driver);
                return Err(format!("taking a connection back from the driver: {e}").into());
            }
        }
    }
    result?;
    Ok(RecvOut {
        committed: resident as usize,
        resident: Some(resident),
        utilization: Some(stats.utilization()),
        enobufs: stats.enobufs,
    })
}

pub fn run(args: &Args, common: &Common) -> BenchResult<Vec<Scenario>> {
    let n = args
        .conns
        .unwrap_or(if common.quick { 2000 } else { 10_000 });
    if n == 0 || args.msg_size == 0 {
        return Err("--conns and --msg-size must be positive".into());
    }
    let messages = args.messages.unwrap_or(20 * n);
    let pool_mem = args.pool_mem.unwrap_or(4 << 20);
    let conns = Rc::new(RefCell::new(Sender::spawn(n, args.msg_size)?));
    let pools = [(Incremental::Off, CONN_BUF), (Incremental::Kernel, INC_BUF)];
    let recvs = [
        Recv::Tokio,
        Recv::TokioBufring,
        Recv::TokioBufringLocal,
        Recv::UringFixed,
    ]
    .into_iter()
    .chain(pools.map(|(mode, buf_len)| Recv::Pool { mode, buf_len }))
    .chain(pools.map(|(mode, buf_len)| Recv::Driver { mode, buf_len }));
    let contenders: Vec<Box<dyn Contender>> = recvs
        .filter(|r| common.wants(&r.name()))
        .map(|recv| {
            Box::new(FaninContender {
                recv,
                conns: Rc::clone(&conns),
                msg_size: args.msg_size,
                messages,
                pool_mem,
                round: 0,
            }) as Box<dyn Contender>
        })
        .collect();
    Ok(vec![interleave(
        "fanin",
        format!(
            "{n} connections, {messages} messages of {} B per round; pools {}",
            args.msg_size,
            size_name(pool_mem)
        ),
        "tokio",
        contenders,
        Vec::new(),
        common.rounds(),
        Duration::from_secs(if common.quick { 8 } else { 45 }),
    )
    .plotting(&[
        "msgs_per_s",
        "rx_mem_mib",
        "peak_rss_mib",
        "utilization",
    ])])
}
