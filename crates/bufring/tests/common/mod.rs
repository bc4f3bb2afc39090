//! Shared helpers for the kernel tests: an io_uring or a clear skip, socket pairs on
//! loopback, and a loop that drives a pool's completions.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bufring::{Chunk, Chunks, Completion, Cqe, Pool};
use io_uring::{squeue, IoUring};

/// How the tests hand CQEs to a pool.
pub trait Reap {
    /// [`Pool::complete`] for the tests' CQEs.
    fn reap(&mut self, cqe: impl Into<Cqe>) -> bufring::Result<Completion>;

    /// The one chunk a CQE that must carry data brings (panics otherwise).
    fn reap_chunk(&mut self, cqe: impl Into<Cqe>) -> Chunk {
        self.reap(cqe)
            .expect("completion rejected")
            .into_chunks()
            .map(one)
            .expect("no data")
    }
}

impl Reap for Pool {
    fn reap(&mut self, cqe: impl Into<Cqe>) -> bufring::Result<Completion> {
        // SAFETY: the tests hand a pool only CQEs reaped from the io_uring it is registered
        // on, for requests that select from it, each once; the few they make up are ones the
        // pool must reject (and the tests check that it does), or go to a pool whose buffers
        // no kernel writes.
        unsafe { self.complete(cqe) }
    }
}

/// The only chunk of a plain receive's completion.
pub fn one(chunks: Chunks) -> Chunk {
    chunks
        .into_single()
        .expect("a plain receive fills one buffer")
}

/// An io_uring, or `None` with a message when the kernel refuses one. With
/// BUFRING_REQUIRE_URING=1 a refusal fails the test instead.
pub fn uring(entries: u32) -> Option<IoUring> {
    match IoUring::new(entries) {
        Ok(r) => Some(r),
        Err(e) => {
            if std::env::var("BUFRING_REQUIRE_URING").as_deref() == Ok("1") {
                panic!("io_uring unavailable ({e}) and BUFRING_REQUIRE_URING=1");
            }
            eprintln!("SKIPPED: io_uring unavailable here ({e}); set BUFRING_REQUIRE_URING=1 to fail instead");
            None
        }
    }
}

/// `let ring = require_uring!();` returns from the test when io_uring is unavailable.
#[macro_export]
macro_rules! require_uring {
    () => {
        require_uring!(256)
    };
    ($n:expr) => {
        match common::uring($n) {
            Some(r) => r,
            None => return,
        }
    };
}

/// A connected TCP pair on 127.0.0.1: (receiver side, sender side).
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    s.set_nodelay(true).unwrap();
    c.set_nodelay(true).unwrap();
    (s, c)
}

/// Pushes one SQE and submits it.
pub fn push(ring: &mut IoUring, sqe: &squeue::Entry) {
    // SAFETY: the tests keep every pool alive until its requests have ended.
    unsafe { ring.submission().push(sqe).expect("submission queue full") };
    ring.submit().unwrap();
}

/// Waits up to `timeout` for at least one CQE and returns all ready ones as (user_data, res, flags).
pub fn reap(ring: &mut IoUring, timeout: Duration) -> Vec<(u64, i32, u32)> {
    let deadline = Instant::now() + timeout;
    loop {
        let cqes: Vec<_> = ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        if !cqes.is_empty() {
            return cqes;
        }
        if Instant::now() >= deadline {
            return cqes;
        }
        let ts = io_uring::types::Timespec::new().nsec(20_000_000);
        let args = io_uring::types::SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::ETIME)
                    || e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => panic!("submit_with_args: {e}"),
        }
    }
}

/// A deterministic pseudo-random byte stream (xorshift), so receivers can check every byte.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u64() as u8;
        }
    }
}

/// Sends `total` bytes of `Pattern::new(seed)` in writes of random sizes up to `max_write`.
pub fn send_pattern(mut s: TcpStream, total: usize, max_write: usize, seed: u64) -> io::Result<()> {
    let mut data = Pattern::new(seed);
    let mut sizes = Pattern::new(seed ^ 0x9e37_79b9);
    let mut buf = vec![0u8; max_write];
    let mut sent = 0;
    while sent < total {
        let n = (1 + sizes.next_u64() as usize % max_write).min(total - sent);
        data.fill(&mut buf[..n]);
        s.write_all(&buf[..n])?;
        sent += n;
    }
    s.shutdown(std::net::Shutdown::Write)
}

/// Checks received chunks against the pattern, byte by byte.
pub struct Checker {
    pattern: Pattern,
    pub received: usize,
}

impl Checker {
    pub fn new(seed: u64) -> Self {
        Checker {
            pattern: Pattern::new(seed),
            received: 0,
        }
    }
    pub fn check(&mut self, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let want = self.pattern.next_u64() as u8;
            assert_eq!(b, want, "byte {} of the stream differs", self.received + i);
        }
        self.received += bytes.len();
    }
}

/// Receives a whole stream through `pool` with one multishot recv (re-armed after ENOBUFS or
/// a multishot end), calling `on_chunk` for each chunk; returns at end of stream. Bounded by
/// `timeout`.
pub fn receive_stream(
    ring: &mut IoUring,
    pool: &mut Pool,
    sock: &TcpStream,
    timeout: Duration,
    mut on_chunk: impl FnMut(&mut Pool, Chunk),
) {
    let deadline = Instant::now() + timeout;
    push(ring, &pool.recv_multishot(sock.as_raw_fd()));
    loop {
        assert!(
            Instant::now() < deadline,
            "stream not finished in {timeout:?}"
        );
        for (_, res, flags) in reap(ring, Duration::from_millis(200)) {
            match pool
                .reap(Cqe::new(res, flags))
                .expect("kernel completion rejected")
            {
                Completion::Data { chunks, more } => {
                    let chunk = one(chunks);
                    on_chunk(pool, chunk);
                    if !more {
                        pool.publish();
                        push(ring, &pool.recv_multishot(sock.as_raw_fd()));
                    }
                }
                Completion::EndOfStream => return,
                Completion::NoBuffers => {
                    pool.publish();
                    push(ring, &pool.recv_multishot(sock.as_raw_fd()));
                }
                Completion::Failed(e) => panic!("recv failed: {e}"),
            }
        }
        pool.publish();
    }
}

/// Reads whatever is left on a blocking socket (for peers that must drain).
pub fn drain(mut s: TcpStream) -> usize {
    let mut buf = [0u8; 65536];
    let mut n = 0;
    while let Ok(k) = s.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += k;
    }
    n
}
