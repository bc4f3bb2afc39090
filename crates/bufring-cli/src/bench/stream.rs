//! `bench stream`: bulk TCP receive on loopback. Senders sendfile() from a memfd, 64 KiB at a
//! time, on their own CPU; the receiver under test runs on another. Figures: GB/s, receiver
//! CPU seconds per GB, receive-buffer memory, ENOBUFS re-arms.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bufring::{Completion, Incremental, Pool};
use io_uring::{opcode, types, IoUring};

use super::{c, interleave, size_name, sys, BenchResult, Common, Contender, Figure, Scenario};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// What the sender hands sendfile() per call.
const SEND_CHUNK: usize = 64 * KIB;
/// The memfd the sender sends from (sent over and over).
const SOURCE_LEN: usize = 4 * MIB;
/// No single run may take longer than this.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `bench stream`.
#[derive(clap::Args)]
pub struct Args {
    /// Bytes per round, all connections together (e.g. 512M; default 512M, 128M with --quick).
    #[arg(long, value_parser = parse_size)]
    bytes: Option<usize>,
    /// Connection counts, one scenario each (default 1,4).
    #[arg(long, value_delimiter = ',')]
    conns: Vec<usize>,
    /// Buffer memory of every pool contender (default 4M: 64 x 64K, 16 x 256K, 4 x 1M).
    #[arg(long, value_parser = parse_size)]
    pool_mem: Option<usize>,
}

/// Parses "512M", "64K", "1G" or plain bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], KIB),
        Some('M' | 'm') => (&s[..s.len() - 1], MIB),
        Some('G' | 'g') => (&s[..s.len() - 1], 1024 * MIB),
        _ => (s, 1),
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is not a size like 64K, 512M or 1G"))
}

/// How a contender receives.
#[derive(Clone, Copy)]
enum Recv {
    /// Blocking read() into a 1 MiB buffer, one thread per connection: the reference.
    ReadLoop,
    /// tokio TcpStream reads into a 64 KiB buffer per connection (current-thread runtime).
    Tokio,
    /// io_uring recv into a per-connection 64 KiB buffer, re-submitted (io-uring crate alone).
    UringFixed,
    /// Hand-written C against liburing: the same multishot recv on a provided buffer ring.
    LiburingC { incremental: bool, buf_len: usize },
    /// bufring's pool with multishot recv (`bundle`: multishot bundle recv).
    Pool {
        mode: Incremental,
        buf_len: usize,
        bundle: bool,
    },
}

impl Recv {
    fn name(self) -> String {
        match self {
            Recv::ReadLoop => "read-loop".into(),
            Recv::Tokio => "tokio".into(),
            Recv::UringFixed => "uring-fixed".into(),
            Recv::LiburingC {
                incremental: false, ..
            } => "liburing-c".into(),
            Recv::LiburingC {
                incremental: true,
                buf_len,
            } => format!("liburing-c-inc-{}", size_name(buf_len)),
            Recv::Pool {
                mode,
                buf_len,
                bundle,
            } => {
                let mode = match mode {
                    Incremental::Off => return "pool".into(),
                    Incremental::Kernel if bundle => "inc-bundle",
                    Incremental::Kernel => "inc",
                    Incremental::Emulated => "emulated",
                    _ => "auto",
                };
                format!("pool-{mode}-{}", size_name(buf_len))
            }
        }
    }

    /// Receive-buffer memory for `conns` connections.
    fn memory(self, conns: usize, pool_mem: usize) -> usize {
        match self {
            Recv::ReadLoop => conns * MIB,
            Recv::Tokio | Recv::UringFixed => conns * 64 * KIB,
            Recv::LiburingC { buf_len, .. } | Recv::Pool { buf_len, .. } => {
                (pool_mem / buf_len).max(1) * buf_len
            }
        }
    }
}

struct StreamContender {
    recv: Recv,
    conns: usize,
    bytes: usize,
    pool_mem: usize,
    source: Arc<OwnedFd>,
}

/// What one receiving thread reports.
struct RecvOut {
    bytes: u64,
    cpu_secs: f64,
    end: Instant,
    enobufs: u64,
    /// Receive calls or completions that brought data.
    ops: u64,
}

impl Contender for StreamContender {
    fn name(&self) -> String {
        self.recv.name()
    }

    fn run_once(&mut self) -> BenchResult<Vec<Figure>> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let mut tx = Vec::new();
        let mut rx = Vec::new();
        for _ in 0..self.conns {
            let t = TcpStream::connect(listener.local_addr()?)?;
            let (r, _) = listener.accept()?;
            tx.push(t);
            rx.push(r);
        }
        let per_conn = self.bytes / self.conns;
        let recv_threads = match self.recv {
            Recv::ReadLoop => self.conns,
            _ => 1,
        };
        let barrier = Arc::new(Barrier::new(self.conns + recv_threads + 1));
        let senders: Vec<_> = tx
            .into_iter()
            .map(|sock| {
                let barrier = Arc::clone(&barrier);
                let source = Arc::clone(&self.source);
                std::thread::spawn(move || send(sock, source.as_raw_fd(), per_conn, &barrier))
            })
            .collect();
        let recv = self.recv;
        let pool_mem = self.pool_mem;
        let receivers: Vec<_> = match recv {
            Recv::ReadLoop => rx
                .into_iter()
                .map(|sock| {
                    let barrier = Arc::clone(&barrier);
                    std::thread::spawn(move || {
                        receiver_thread(recv, vec![sock], pool_mem, &barrier)
                    })
                })
                .collect(),
            _ => {
                let barrier = Arc::clone(&barrier);
                vec![std::thread::spawn(move || {
                    receiver_thread(recv, rx, pool_mem, &barrier)
                })]
            }
        };
        barrier.wait();
        let t0 = Instant::now();
        let mut outs = Vec::new();
        let mut err: Option<String> = None;
        for r in receivers {
            match r.join() {
                Ok(Ok(o)) => outs.push(o),
                Ok(Err(e)) => err = Some(e.to_string()),
                Err(_) => err = Some("receiver panicked".into()),
            }
        }
        for s in senders {
            match s.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => err = err.or(Some(format!("sender: {e}"))),
                Err(_) => err = err.or(Some("sender panicked".into())),
            }
        }
        if let Some(e) = err {
            return Err(e.into());
        }
        let bytes: u64 = outs.iter().map(|o| o.bytes).sum();
        let want = (per_conn * self.conns) as u64;
        if bytes != want {
            return Err(format!("received {bytes} bytes, expected {want}").into());
        }
        let end = outs.iter().map(|o| o.end).max().unwrap_or(t0);
        let secs = end.duration_since(t0).as_secs_f64().max(1e-9);
        let cpu: f64 = outs.iter().map(|o| o.cpu_secs).sum();
        let gb = bytes as f64 / 1e9;
        Ok(vec![
            Figure::up("gbps", "GB/s", gb / secs),
            Figure::down("cpu_s_per_gb", "CPU s/GB", cpu / gb),
            Figure::down(
                "rx_mem_mib",
                "MiB",
                self.recv.memory(self.conns, self.pool_mem) as f64 / MIB as f64,
            ),
            Figure::up(
                "kib_per_op",
                "KiB/op",
                bytes as f64 / 1024.0 / outs.iter().map(|o| o.ops).sum::<u64>().max(1) as f64,
            ),
            Figure::down(
                "enobufs",
                "re-arms",
                outs.iter().map(|o| o.enobufs).sum::<u64>() as f64,
            ),
        ])
    }
}

/// The sender: `len` bytes in 64 KiB sendfile() calls, then end of stream.
fn send(sock: TcpStream, source: RawFd, len: usize, barrier: &Barrier) -> std::io::Result<()> {
    sys::pin(sys::sender_cpu());
    sock.set_write_timeout(Some(RUN_TIMEOUT))?;
    barrier.wait();
    let mut sent = 0;
    let mut off = 0;
    while sent < len {
        let n = (len - sent).min(SEND_CHUNK).min(SOURCE_LEN - off);
        let k = sys::sendfile(sock.as_raw_fd(), source, off, n)?;
        if k == 0 {
            return Err(std::io::Error::other("sendfile sent nothing"));
        }
        sent += k;
        off = (off + k) % SOURCE_LEN;
    }
    sock.shutdown(std::net::Shutdown::Write)
}

fn receiver_thread(
    recv: Recv,
    socks: Vec<TcpStream>,
    pool_mem: usize,
    barrier: &Barrier,
) -> BenchResult<RecvOut> {
    sys::pin(sys::receiver_cpu());
    // Whatever happens, the barrier is passed once, or everybody else would wait forever.
    let mut waited = false;
    let mut go = || {
        waited = true;
        barrier.wait();
        (sys::thread_cpu_secs(), Instant::now())
    };
    let r = receive(recv, &socks, pool_mem, &mut go);
    if !waited {
        barrier.wait();
    }
    r
}

/// Sets the contender up on `socks`, calls `go` (start line), receives everything.
fn receive(
    recv: Recv,
    socks: &[TcpStream],
    pool_mem: usize,
    go: &mut dyn FnMut() -> (f64, Instant),
) -> BenchResult<RecvOut> {
    let fds: Vec<RawFd> = socks.iter().map(|s| s.as_raw_fd()).collect();
    let mut enobufs = 0;
    let (cpu0, bytes, ops) = match recv {
        Recv::ReadLoop => {
            let mut sock = &socks[0];
            sock.set_read_timeout(Some(RUN_TIMEOUT))?;
            let mut buf = vec![0x55u8; MIB];
            let (cpu0, _) = go();
            let (mut bytes, mut ops) = (0u64, 0u64);
            loop {
                let n = sock.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                bytes += n as u64;
                ops += 1;
            }
            (cpu0, bytes, ops)
        }
        Recv::Tokio => tokio_receive(socks, go)?,
        Recv::UringFixed => uring_fixed(&fds, go)?,
        Recv::LiburingC {
            incremental,
            buf_len,
        } => {
            let count = (pool_mem / buf_len).max(1) as u32;
            let mut s = c::CStream::setup(&fds, buf_len as u32, count, incremental)?;
            let (cpu0, _) = go();
            let out = s.run(RUN_TIMEOUT.as_millis() as i32)?;
            enobufs = out.enobufs;
            (cpu0, out.bytes, out.ops)
        }
        Recv::Pool {
            mode,
            buf_len,
            bundle,
        } => {
            let count = (pool_mem / buf_len).max(1);
            let (cpu0, b, o, e) = pool_receive(&fds, mode, buf_len, count, bundle, go)?;
            enobufs = e;
            (cpu0, b, o)
        }
    };
    Ok(RecvOut {
        bytes,
        cpu_secs: sys::thread_cpu_secs() - cpu0,
        end: Instant::now(),
        enobufs,
        ops,
    })
}

fn tokio_receive(
    socks: &[TcpStream],
    go: &mut dyn FnMut() -> (f64, Instant),
) -> BenchResult<(f64, u64, u64)> {
    use tokio::io::AsyncReadExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let streams = {
        let _g = rt.enter();
        socks
            .iter()
            .map(|s| {
                let s = s.try_clone()?;
                s.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(s)
            })
            .collect::<std::io::Result<Vec<_>>>()?
    };
    let (cpu0, _) = go();
    let (bytes, ops) = rt.block_on(async move {
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move {
                    let mut buf = vec![0x55u8; 64 * KIB];
                    let (mut n, mut ops) = (0u64, 0u64);
                    loop {
                        let k = s.read(&mut buf).await?;
                        if k == 0 {
                            return Ok::<(u64, u64), std::io::Error>((n, ops));
                        }
                        n += k as u64;
                        ops += 1;
                    }
                })
            })
            .collect();
        tokio::time::timeout(RUN_TIMEOUT, async move {
            let (mut total, mut ops) = (0u64, 0u64);
            for t in tasks {
                let (n, o) = t.await.map_err(std::io::Error::other)??;
                total += n;
                ops += o;
            }
            Ok::<(u64, u64), std::io::Error>((total, ops))
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "tokio receive"))?
    })?;
    Ok((cpu0, bytes, ops))
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

fn uring_fixed(
    fds: &[RawFd],
    go: &mut dyn FnMut() -> (f64, Instant),
) -> BenchResult<(f64, u64, u64)> {
    const LEN: usize = 64 * KIB;
    let mut ring = IoUring::new(256)?;
    let mut bufs: Vec<Vec<u8>> = fds.iter().map(|_| vec![0x55u8; LEN]).collect();
    let recv = |fd: RawFd, buf: &mut Vec<u8>, i: usize| {
        opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), LEN as u32)
            .build()
            .user_data(i as u64)
    };
    for (i, &fd) in fds.iter().enumerate() {
        let e = recv(fd, &mut bufs[i], i);
        // SAFETY: the buffer lives until the request completes (see the forget on error below).
        unsafe { ring.submission().push(&e)? };
    }
    let (cpu0, _) = go();
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut open = fds.len();
    let (mut bytes, mut ops) = (0u64, 0u64);
    let mut again = Vec::with_capacity(fds.len());
    let r: BenchResult<()> = (|| {
        while open > 0 {
            if Instant::now() > deadline {
                return Err("timed out".into());
            }
            wait(&mut ring)?;
            for cqe in ring.completion() {
                let i = cqe.user_data() as usize;
                match cqe.result() {
                    n if n > 0 => {
                        bytes += n as u64;
                        ops += 1;
                        again.push(i);
                    }
                    0 => open -= 1,
                    e => return Err(std::io::Error::from_raw_os_error(-e).into()),
                }
            }
            for i in again.drain(..) {
                let e = recv(fds[i], &mut bufs[i], i);
                // SAFETY: as above.
                unsafe { ring.submission().push(&e)? };
            }
        }
        Ok(())
    })();
    if let Err(e) = r {
        // Requests may still be in flight: their buffers must stay valid.
        std::mem::forget(bufs);
        std::mem::forget(ring);
        return Err(e);
    }
    Ok((cpu0, bytes, ops))
}

fn pool_receive(
    fds: &[RawFd],
    mode: Incremental,
    buf_len: usize,
    count: usize,
    bundle: bool,
    go: &mut dyn FnMut() -> (f64, Instant),
) -> BenchResult<(f64, u64, u64, u64)> {
    let mut ring = IoUring::new(256)?;
    let mut pool = Pool::builder(0)
        .count(count)
        .buf_len(buf_len)
        .incremental(mode)
        .build(&ring)?;
    let arm = |pool: &Pool, fd: RawFd, i: usize| {
        if bundle {
            pool.recv_multishot_bundle(fd).user_data(i as u64)
        } else {
            pool.recv_multishot(fd).user_data(i as u64)
        }
    };
    for (i, &fd) in fds.iter().enumerate() {
        // SAFETY: the pool outlives every request (forgotten below if one may still be active).
        unsafe { ring.submission().push(&arm(&pool, fd, i))? };
    }
    let (cpu0, _) = go();
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut open = fds.len();
    let (mut bytes, mut enobufs, mut ops) = (0u64, 0u64, 0u64);
    let mut rearm = Vec::with_capacity(fds.len());
    let r: BenchResult<()> = (|| {
        while open > 0 {
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
                        ops += 1;
                        // Touch each chunk, as a reader would (and drop it).
                        bytes += chunks.map(|c| c.len() as u64).sum::<u64>();
                        if !more {
                            rearm.push(i);
                        }
                    }
                    Completion::EndOfStream => open -= 1,
                    Completion::NoBuffers => {
                        enobufs += 1;
                        rearm.push(i);
                    }
                    Completion::Failed(e) => return Err(e.into()),
                }
            }
            pool.publish();
            for i in rearm.drain(..) {
                let e = arm(&pool, fds[i], i);
                // SAFETY: as above.
                unsafe { ring.submission().push(&e)? };
            }
        }
        Ok(())
    })();
    if let Err(e) = r {
        std::mem::forget(pool);
        std::mem::forget(ring);
        return Err(e);
    }
    Ok((cpu0, bytes, ops, enobufs))
}

pub fn run(args: &Args, common: &Common) -> BenchResult<Vec<Scenario>> {
    let bytes = args
        .bytes
        .unwrap_or(if common.quick { 128 * MIB } else { 512 * MIB });
    let pool_mem = args.pool_mem.unwrap_or(4 * MIB);
    let conns = if args.conns.is_empty() {
        vec![1, 4]
    } else {
        args.conns.clone()
    };
    let source = Arc::new(sys::memfd(SOURCE_LEN)?);
    let mut recvs = vec![Recv::ReadLoop, Recv::Tokio, Recv::UringFixed];
    let c_recvs = [
        Recv::LiburingC {
            incremental: false,
            buf_len: 64 * KIB,
        },
        Recv::LiburingC {
            incremental: true,
            buf_len: 64 * KIB,
        },
        Recv::LiburingC {
            incremental: true,
            buf_len: 256 * KIB,
        },
        Recv::LiburingC {
            incremental: true,
            buf_len: MIB,
        },
    ];
    let mut skipped = Vec::new();
    match c::missing() {
        None => recvs.extend(c_recvs),
        Some(why) => skipped.extend(c_recvs.iter().map(|r| (r.name(), why.to_string()))),
    }
    recvs.push(Recv::Pool {
        mode: Incremental::Off,
        buf_len: 64 * KIB,
        bundle: false,
    });
    for buf_len in [64 * KIB, 256 * KIB, MIB] {
        recvs.push(Recv::Pool {
            mode: Incremental::Kernel,
            buf_len,
            bundle: false,
        });
    }
    // Bundles and emulated incremental consumption, at the size that did best above.
    recvs.push(Recv::Pool {
        mode: Incremental::Kernel,
        buf_len: 256 * KIB,
        bundle: true,
    });
    recvs.push(Recv::Pool {
        mode: Incremental::Emulated,
        buf_len: 256 * KIB,
        bundle: false,
    });
    recvs.retain(|r| common.wants(&r.name()));
    skipped.retain(|(n, _)| common.wants(n));
    let mut out = Vec::new();
    for &n in &conns {
        if n == 0 {
            return Err("--conns: a scenario needs at least one connection".into());
        }
        let contenders: Vec<Box<dyn Contender>> = recvs
            .iter()
            .map(|&recv| {
                Box::new(StreamContender {
                    recv,
                    conns: n,
                    bytes: bytes / n * n,
                    pool_mem,
                    source: Arc::clone(&source),
                }) as Box<dyn Contender>
            })
            .collect();
        out.push(
            interleave(
                "stream",
                format!(
                    "{n} connection{}, {} per round",
                    if n == 1 { "" } else { "s" },
                    size_name(bytes)
                ),
                "read-loop",
                contenders,
                skipped.clone(),
                common.rounds(),
                Duration::from_secs(if common.quick { 6 } else { 30 }),
            )
            .plotting(&["gbps", "cpu_s_per_gb", "kib_per_op"]),
        );
    }
    Ok(out)
}
