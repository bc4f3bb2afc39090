//! `bench rr`: request/response latency. N client connections to a server, each in a closed
//! loop for a bounded time: send a 64 B request, wait for the whole `--size` response, again.
//! The server is the contender: `tokio` (a task per connection, `read_exact` the request,
//! `write_all` the response) or `tokio-bufring` (the same tasks, receiving through a
//! `bufring_tokio::RecvStream` of one shared `Uring` and answering with its `send_bytes`), with
//! its driver on a thread of its own, or `tokio-bufring-local` with its driver as a task of
//! the server's runtime (`Builder::build_local`, kernels from 6.13).
//!
//! Each round makes its own connections. The clients are one thread of this process (its own
//! tokio current-thread runtime, a task per connection, pinned to the sender's CPU), not a
//! child process: simpler, and the server's CPU is the process's CPU time over the measured
//! window minus the client thread's own (so it includes bufring-tokio's driver thread, which
//! inherits the server thread's CPU pinning). Latency is measured per request on the client
//! side (`Instant` before the write, after the last byte of the response), so it includes the
//! client's own scheduling, the same for both servers.
//! Figures: requests/s, p50 and p99 latency, server CPU per request.

use std::cell::Cell;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::fanin::process_cpu_secs;
use super::{interleave, size_name, sys, BenchResult, Common, Contender, Figure, Scenario};

/// Request size.
const REQ: usize = 64;
/// Bound on everything that waits: connecting, accepting, the clients' end.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The `tokio-bufring` pool's buffer.
const BUF_LEN: usize = 64 * 1024;

/// Options of `bench rr`.
#[derive(clap::Args)]
pub struct Args {
    /// Connections (default 1000, 200 with --quick).
    #[arg(long)]
    conns: Option<usize>,
    /// Response size in bytes.
    #[arg(long, default_value = "1K", value_parser = super::stream::parse_size)]
    size: usize,
    /// Measured seconds per round (default 3, 1 with --quick; at most 60).
    #[arg(long)]
    secs: Option<f64>,
    /// Buffer memory of the `tokio-bufring` pool (default 4M).
    #[arg(long, value_parser = super::stream::parse_size)]
    pool_mem: Option<usize>,
}

#[derive(Clone, Copy)]
enum Server {
    Tokio,
    /// bufring-tokio with its driver thread (`Builder::build`).
    TokioBufring,
    /// bufring-tokio with its driver as a task of the server's runtime
    /// (`Builder::build_local`; kernels from 6.13).
    TokioBufringLocal,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Tokio => "tokio",
            Server::TokioBufring => "tokio-bufring",
            Server::TokioBufringLocal => "tokio-bufring-local",
        }
    }
}

struct RrContender {
    server: Server,
    conns: usize,
    size: usize,
    secs: f64,
    pool_mem: usize,
}

/// What the client thread measured.
struct Report {
    /// Latency of every request, nanoseconds.
    lat_ns: Vec<u64>,
    secs: f64,
    /// The process's CPU seconds minus the client thread's, over the same window.
    server_cpu: f64,
}

impl Contender for RrContender {
    fn name(&self) -> String {
        self.server.name().into()
    }

    fn run_once(&mut self) -> BenchResult<Vec<Figure>> {
        let (n, size) = (self.conns, self.size);
        let need = (2 * n + 256) as u64;
        let limit = sys::raise_nofile(need);
        if limit < need {
            return Err(format!(
                "{n} connections need {need} descriptors; RLIMIT_NOFILE allows {limit} (use --conns)"
            )
            .into());
        }
        sys::pin(sys::receiver_cpu());
        let listener = TcpListener::bind("127.0.0.1:0")?;
        // SAFETY: listen() on our own socket to raise the backlog; no memory involved.
        unsafe { libc::listen(listener.as_raw_fd(), 4096) };
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let secs = self.secs;
        let client = std::thread::Builder::new()
            .name("rr-client".into())
            .spawn(move || client_main(addr, n, size, secs, go_rx).map_err(|e| e.to_string()))?;
        let deadline = Instant::now() + TIMEOUT;
        let mut socks = Vec::with_capacity(n);
        // Every early return drops `go_tx`: the client thread then ends on its own.
        while socks.len() < n {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)?;
                    s.set_nodelay(true)?;
                    socks.push(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline || client.is_finished() {
                        return Err("the clients did not connect".into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e.into()),
            }
        }
        drop(listener);
        let served = match self.server {
            Server::Tokio => serve_tokio(socks, size, go_tx),
            Server::TokioBufring => serve_bufring(socks, size, self.pool_mem, false, go_tx),
            Server::TokioBufringLocal => serve_bufring(socks, size, self.pool_mem, true, go_tx),
        };
        let report = client.join().map_err(|_| "the client thread panicked")?;
        served?;
        let mut report = report?;
        let reqs = report.lat_ns.len();
        if reqs == 0 {
            return Err("no request completed".into());
        }
        report.lat_ns.sort_unstable();
        let pct = |p: usize| report.lat_ns[(reqs * p / 100).min(reqs - 1)] as f64 / 1e3;
        Ok(vec![
            Figure::up("req_per_s", "req/s", reqs as f64 / report.secs),
            Figure::down("p50_us", "µs", pct(50)),
            Figure::down("p99_us", "µs", pct(99)),
            Figure::down(
                "server_cpu_us_per_req",
                "µs",
                report.server_cpu * 1e6 / reqs as f64,
            ),
        ])
    }
}

/// The clients: connect `n` connections, wait for the go, then run each connection's closed
/// loop until `secs` have passed (the request in flight then completes), and close them.
fn client_main(
    addr: SocketAddr,
    n: usize,
    size: usize,
    secs: f64,
    go: mpsc::Receiver<()>,
) -> BenchResult<Report> {
    sys::pin(sys::sender_cpu());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let conns = rt.block_on(async {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let s = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| "connect timed out")??;
            s.set_nodelay(true)?;
            conns.push(s);
        }
        BenchResult::Ok(conns)
    })?;
    go.recv_timeout(TIMEOUT)
        .map_err(|_| "the server did not start")?;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let cpu0 = (process_cpu_secs(), sys::thread_cpu_secs());
    let lat_ns = rt.block_on(async {
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move {
                    let req = [0x11u8; REQ];
                    let mut resp = vec![0u8; size];
                    let mut lat = Vec::new();
                    while Instant::now() < end {
                        let t = Instant::now();
                        s.write_all(&req).await?;
                        s.read_exact(&mut resp).await?;
                        lat.push(t.elapsed().as_nanos() as u64);
                    }
                    std::io::Result::Ok(lat)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            let lat = tokio::time::timeout(TIMEOUT, t)
                .await
                .map_err(|_| "a client timed out")??
                .map_err(|e| format!("client: {e}"))?;
            all.extend(lat);
        }
        BenchResult::Ok(all)
    })?;
    let t1 = Instant::now();
    let cpu1 = (process_cpu_secs(), sys::thread_cpu_secs());
    Ok(Report {
        lat_ns,
        secs: t1.duration_since(t0).as_secs_f64().max(1e-9),
        server_cpu: (cpu1.0 - cpu0.0) - (cpu1.1 - cpu0.1),
    })
}

/// Counts the server's tasks down to zero (every client closed its connection).
struct Live {
    left: Cell<usize>,
    all_done: tokio::sync::Notify,
}

impl Live {
    fn new(n: usize) -> Rc<Live> {
        Rc::new(Live {
            left: Cell::new(n),
            all_done: tokio::sync::Notify::new(),
        })
    }

    fn one_done(&self) {
        self.left.set(self.left.get() - 1);
        if self.left.get() == 0 {
            self.all_done.notify_one();
        }
    }

    /// Runs `local` until every task is done (bounded: the clients stop within 60 s).
    fn wait(&self, rt: &tokio::runtime::Runtime, local: &tokio::task::LocalSet) -> BenchResult<()> {
        let bound = TIMEOUT + Duration::from_secs(60);
        rt.block_on(
            local.run_until(async { tokio::time::timeout(bound, self.all_done.notified()).await }),
        )
        .map_err(|_| "the server's connections did not all end".into())
    }
}

fn serve_tokio(socks: Vec<TcpStream>, size: usize, go: mpsc::Sender<()>) -> BenchResult<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let resp: Rc<[u8]> = vec![0x5au8; size].into();
    let live = Live::new(socks.len());
    {
        let _g = rt.enter();
        for s in socks {
            s.set_nonblocking(true)?;
            let mut s = tokio::net::TcpStream::from_std(s)?;
            let (resp, live) = (Rc::clone(&resp), Rc::clone(&live));
            local.spawn_local(async move {
                let mut req = [0u8; REQ];
                while s.read_exact(&mut req).await.is_ok() {
                    if s.write_all(&resp).await.is_err() {
                        break;
                    }
                }
                live.one_done();
            });
        }
    }
    go.send(()).map_err(|_| "the client thread is gone")?;
    live.wait(&rt, &local)
}

/// The same server on bufring-tokio: the connections are the streams' (closed with them).
/// `in_runtime`: the driver is a task of this runtime (`build_local`), not a thread.
fn serve_bufring(
    socks: Vec<TcpStream>,
    size: usize,
    pool_mem: usize,
    in_runtime: bool,
    go: mpsc::Sender<()>,
) -> BenchResult<()> {
    let builder = bufring_tokio::Uring::builder()
        .buffers((pool_mem / BUF_LEN).max(1))
        .buf_len(BUF_LEN)
        .driver(
            bufring::driver::Driver::builder()
                .entries(4096)
                .cq_entries((2 * socks.len() as u32 + 64).next_power_of_two().max(8192)),
        );
    let (rt, local, uring) = super::tokio_uring(builder, in_runtime)?;
    let n = socks.len();
    let live = Live::new(n);
    let r = (|| -> BenchResult<()> {
        for s in socks {
            let mut stream = uring.recv_stream(s)?;
            let live = Rc::clone(&live);
            local.spawn_local(async move {
                // Bytes of the request being received: requests may arrive cut or merged.
                let mut part = 0usize;
                'conn: while let Some(Ok(chunk)) = stream.recv().await {
                    part += chunk.len();
                    drop(chunk);
                    while part >= REQ {
                        part -= REQ;
                        if stream.send_bytes(vec![0x5au8; size]).await.is_err() {
                            break 'conn;
                        }
                    }
                }
                live.one_done();
            });
        }
        // Commands are taken in order: once this is answered every stream is open.
        let opened = rt
            .block_on(local.run_until(async { tokio::time::timeout(TIMEOUT, uring.stats()).await }))
            .map_err(|_| "bufring-tokio stats timed out")??
            .streams;
        if opened != n {
            return Err(format!("{opened} of {n} streams open").into());
        }
        go.send(()).map_err(|_| "the client thread is gone")?;
        live.wait(&rt, &local)
    })();
    // The tasks and their streams, then the driver thread (joined by the last handle's drop).
    drop(local);
    drop(rt);
    drop(uring);
    r
}

pub fn run(args: &Args, common: &Common) -> BenchResult<Vec<Scenario>> {
    let n = args.conns.unwrap_or(if common.quick { 200 } else { 1000 });
    let secs = args.secs.unwrap_or(if common.quick { 1.0 } else { 3.0 });
    if n == 0 || !(secs > 0.0 && secs <= 60.0) {
        return Err("--conns must be positive and --secs within (0, 60]".into());
    }
    let pool_mem = args.pool_mem.unwrap_or(4 << 20);
    let contenders: Vec<Box<dyn Contender>> = [
        Server::Tokio,
        Server::TokioBufring,
        Server::TokioBufringLocal,
    ]
    .into_iter()
    .filter(|s| common.wants(s.name()))
    .map(|server| {
        Box::new(RrContender {
            server,
            conns: n,
            size: args.size,
            secs,
            pool_mem,
        }) as Box<dyn Contender>
    })
    .collect();
    Ok(vec![interleave(
        "rr",
        format!(
            "{n} connections, {REQ} B requests, {} responses, {secs} s per round; pool {}",
            size_name(args.size),
            size_name(pool_mem)
        ),
        "tokio",
        contenders,
        Vec::new(),
        common.rounds(),
        Duration::from_secs(if common.quick { 10 } else { 60 }),
    )
    .plotting(&["req_per_s", "p99_us"])])
}
