//! An echo server on one incremental pool: every connection has one multishot receive that
//! selects from the shared pool, and every byte goes back out in a send made straight from the
//! chunk that holds it. The template for a server on the raw pool:
//! - requests are tagged in `user_data` (what, and for which connection);
//! - a chunk stays in its connection's queue until the send that reads it completes (partial
//!   sends resume where they stopped), and dropping it gives the buffer back;
//! - a receive that ended with `NoBuffers` is re-armed once buffers came back (after
//!   `publish`), in the order the connections ran dry;
//! - after each `publish`, `provide` hands a legacy pool's buffers to the kernel (kernels
//!   before 5.19, where `Backend::Auto` falls back to legacy provided buffers);
//! - the loop ends when every connection closed; the pool outlives every request.
//!
//! `cargo run -p bufring --example echo [-- CLIENTS]` serves on 127.0.0.1, runs its own
//! clients (64 by default, each sending 256 KiB in uneven pieces), checks every echoed byte
//! and exits; it fails if anything is lost or takes longer than 60 s.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bufring::{Chunk, Completion, Incremental, Pool};
use io_uring::{opcode, types, IoUring};

const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
/// PROVIDE_BUFFERS: a pool on legacy provided buffers (kernels before 5.19) hands its buffers
/// to the kernel through SQEs (`Pool::provide`); on a buffer ring there are none.
const PROVIDE: u64 = 4;

/// `user_data`: the kind of request in the high half, the connection in the low half.
fn tag(kind: u64, conn: usize) -> u64 {
    kind << 32 | conn as u64
}

/// One client connection, as the server sees it.
struct Conn {
    sock: TcpStream,
    /// Received and not yet sent back; the front chunk may be partly sent, and is what the
    /// send in flight reads.
    queue: VecDeque<Chunk>,
    sending: bool,
    /// The peer closed its side: close ours once the queue is sent.
    eof: bool,
    closed: bool,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let clients: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 64,
    };
    let Ok(mut ring) = IoUring::new(1024) else {
        eprintln!("io_uring is unavailable here: nothing to show");
        return Ok(());
    };
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    // 64 buffers of 64 KiB: far fewer than the clients' data in flight, so the pool runs dry and
    // receives are re-armed as buffers come back.
    let mut pool = Pool::builder(0)
        .count(64)
        .buf_len(64 * 1024)
        .incremental(Incremental::Auto)
        .build(&ring)?;
    println!(
        "echo on {addr}: {clients} clients, {} buffers of {} KiB, incremental: {:?}",
        pool.count(),
        pool.buf_len() / 1024,
        pool.incremental()
    );
    let workers: Vec<_> = (0..clients)
        .map(|i| std::thread::spawn(move || client(addr, i)))
        .collect();

    provide(&mut pool, &mut ring);
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(tag(ACCEPT, 0));
    // SAFETY: the accept names no memory; the listener outlives the loop.
    unsafe { ring.submission().push(&accept)? };
    let mut conns: Vec<Conn> = Vec::new();
    let mut dry: VecDeque<usize> = VecDeque::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while conns.len() < clients || conns.iter().any(|c| !c.closed) {
        if Instant::now() > deadline {
            return Err("the echo did not finish in 60 s".into());
        }
        let ts = types::Timespec::new().sec(1);
        let args = types::SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
            Err(e) => return Err(e.into()),
        }
        let cqes: Vec<_> = ring.completion().collect();
        let mut rearm = Vec::new();
        for cqe in cqes {
            let i = (cqe.user_data() & 0xffff_ffff) as usize;
            match cqe.user_data() >> 32 {
                ACCEPT => {
                    use std::os::fd::FromRawFd;
                    if cqe.result() < 0 {
                        return Err(std::io::Error::from_raw_os_error(-cqe.result()).into());
                    }
                    // SAFETY: the kernel gave us this new descriptor; nothing else owns it.
                    let sock = unsafe { TcpStream::from_raw_fd(cqe.result()) };
                    conns.push(Conn {
                        sock,
                        queue: VecDeque::new(),
                        sending: false,
                        eof: false,
                        closed: false,
                    });
                    rearm.push(conns.len() - 1);
                }
                RECV => {
                    // SAFETY: RECV-tagged CQEs are those of receives that select from `pool`,
                    // reaped from the ring it is registered on, each handed over once.
                    match unsafe { pool.complete(&cqe)? } {
                        completion @ Completion::Data { .. } => {
                            if completion.must_rearm() {
                                rearm.push(i);
                            }
                            let c = &mut conns[i];
                            c.queue
                                .extend(completion.into_chunks().into_iter().flatten());
                        }
                        Completion::NoBuffers => dry.push_back(i),
                        Completion::EndOfStream => conns[i].eof = true,
                        Completion::Failed(e) => return Err(e.into()),
                    }
                }
                SEND => {
                    let c = &mut conns[i];
                    c.sending = false;
                    let sent = usize::try_from(cqe.result())
                        .map_err(|_| std::io::Error::from_raw_os_error(-cqe.result()))?;
                    let front = c.queue.front_mut().expect("a send reads the front chunk");
                    front.advance(sent);
                    if front.is_empty() {
                        // The last reader of these bytes is done: the buffer can go back.
                        c.queue.pop_front();
                    }
                }
                PROVIDE if cqe.result() < 0 => {
                    return Err(std::io::Error::from_raw_os_error(-cqe.result()).into())
                }
                PROVIDE => {}
                _ => unreachable!("unknown tag {:#x}", cqe.user_data()),
            }
        }
        // One tail store gives the kernel every buffer whose last chunk was dropped.
        pool.publish();
        provide(&mut pool, &mut ring);
        if pool.stats().in_kernel > 0 {
            rearm.extend(dry.drain(..));
        }
        for i in rearm {
            let e = pool
                .recv_multishot(conns[i].sock.as_raw_fd())
                .user_data(tag(RECV, i));
            // SAFETY: the pool outlives the loop, so it outlives every receive.
            unsafe { ring.submission().push(&e)? };
        }
        for (i, c) in conns.iter_mut().enumerate() {
            if c.closed || c.sending {
                continue;
            }
            if let Some(front) = c.queue.front() {
                let e = opcode::Send::new(
                    types::Fd(c.sock.as_raw_fd()),
                    front.as_ptr(),
                    front.len() as u32,
                )
                .build()
                .user_data(tag(SEND, i));
                // SAFETY: the chunk stays in the queue (alive) until this send completes.
                unsafe { ring.submission().push(&e)? };
                c.sending = true;
            } else if c.eof {
                c.sock.shutdown(Shutdown::Write)?;
                c.closed = true;
            }
        }
    }
    for w in workers {
        w.join().map_err(|_| "a client panicked")??;
    }
    let s = pool.stats();
    println!(
        "done: {} bytes echoed in {} completions, peak {} buffers with the application, \
         {} ENOBUFS re-arms, utilization {:.2}",
        s.bytes_delivered,
        s.completions,
        s.peak_with_app,
        s.enobufs,
        s.utilization()
    );
    Ok(())
}

/// Legacy pools: pushes the PROVIDE_BUFFERS SQEs of the buffers `publish` staged (nothing on a
/// buffer ring).
fn provide(pool: &mut Pool, ring: &mut IoUring) {
    pool.provide(|sqe| {
        // SAFETY: the SQE gives the kernel buffers of `pool`, which outlives every request.
        unsafe { ring.submission().push(&sqe.user_data(tag(PROVIDE, 0))) }.is_ok()
    });
}

/// One client: sends 256 KiB in uneven pieces while reading the echo, checks every byte.
fn client(addr: std::net::SocketAddr, seed: usize) -> std::result::Result<(), String> {
    let data: Vec<u8> = (0..256 * 1024)
        .map(|k: usize| (k.wrapping_mul(31) ^ seed.wrapping_mul(131)) as u8)
        .collect();
    let mut sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut reader = sock.try_clone().map_err(|e| e.to_string())?;
    let expect = data.clone();
    let check = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(expect.len());
        reader.read_to_end(&mut got).map_err(|e| e.to_string())?;
        if got != expect {
            return Err(format!(
                "client {seed}: echo differs ({} bytes back)",
                got.len()
            ));
        }
        Ok(())
    });
    for piece in data.chunks(1000 + seed % 7000) {
        sock.write_all(piece).map_err(|e| e.to_string())?;
    }
    sock.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    check.join().map_err(|_| "checker panicked".to_string())?
}
