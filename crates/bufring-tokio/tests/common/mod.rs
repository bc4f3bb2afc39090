//! Shared helpers: a `Uring` or a clear skip, a pattern to verify streams against, peers on
//! loopback, and `next` for streams without a futures crate.
#![allow(dead_code)]

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bufring_tokio::{Builder, Uring};
use futures_core::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A `Uring` from `b`, or `None` (and a message) where the kernel refuses io_uring. With
/// BUFRING_REQUIRE_URING=1 a refusal fails the test instead.
pub fn uring(b: Builder) -> Option<Uring> {
    match b.build() {
        Ok(u) => Some(u),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied
            ) =>
        {
            if std::env::var("BUFRING_REQUIRE_URING").as_deref() == Ok("1") {
                panic!("io_uring unavailable ({e}) and BUFRING_REQUIRE_URING=1");
            }
            eprintln!("SKIPPED: io_uring unavailable here ({e}); set BUFRING_REQUIRE_URING=1 to fail instead");
            None
        }
        Err(e) => panic!("building the Uring: {e}"),
    }
}

/// The next item of a stream.
pub async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
}

/// Byte `i` of stream `seed`: not periodic in any power of two, so a lost, repeated or
/// reordered piece shows.
pub fn pattern(seed: u64, i: u64) -> u8 {
    (i.wrapping_mul(31)
        .wrapping_add(seed.wrapping_mul(7))
        .wrapping_add(i >> 9)
        % 251) as u8
}

/// `len` bytes of stream `seed` from position `at`.
pub fn fill(seed: u64, at: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|k| pattern(seed, at + k)).collect()
}

/// Checks received bytes against the pattern, position by position.
pub struct Checker {
    pub seed: u64,
    pub pos: u64,
}

impl Checker {
    pub fn new(seed: u64) -> Self {
        Checker { seed, pos: 0 }
    }

    pub fn check(&mut self, bytes: &[u8]) {
        for (k, &b) in bytes.iter().enumerate() {
            let at = self.pos + k as u64;
            assert_eq!(
                b,
                pattern(self.seed, at),
                "stream {} differs at byte {at}",
                self.seed
            );
        }
        self.pos += bytes.len() as u64;
    }
}

/// A connected pair on loopback: (the side given to the Uring, the peer).
pub async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, a) = tokio::join!(TcpStream::connect(addr), l.accept());
    (a.unwrap().0, c.unwrap())
}

/// A connected pair whose kernel buffers are small and fixed (64 KiB send buffer on the first,
/// 64 KiB receive buffer on the second, no autotuning): a peer that does not read holds back
/// the sender after a few hundred KiB, however fast or slow the machine (the kernel matrix
/// runs under QEMU's emulation, where autotuned loopback buffers took in megabytes).
pub async fn small_buffer_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    use tokio::net::TcpSocket;
    let ls = TcpSocket::new_v4().unwrap();
    // Accepted sockets inherit the listener's buffer sizes.
    ls.set_send_buffer_size(64 * 1024).unwrap();
    ls.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = ls.listen(16).unwrap();
    let addr = l.local_addr().unwrap();
    let cs = TcpSocket::new_v4().unwrap();
    cs.set_recv_buffer_size(64 * 1024).unwrap();
    let (c, a) = tokio::join!(cs.connect(addr), l.accept());
    (a.unwrap().0, c.unwrap())
}

/// A current-thread runtime with I/O and time.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A multi-thread runtime of two workers with I/O and time.
pub fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `test` on `rt` with a `Uring` from `b` whose driver has a thread of its own (skipped
/// where io_uring is refused), within `LIMIT`.
pub fn with_driver_thread<F: std::future::Future<Output = ()>>(
    rt: tokio::runtime::Runtime,
    b: Builder,
    test: impl FnOnce(Uring) -> F,
) {
    rt.block_on(async {
        let Some(uring) = uring(b) else {
            return;
        };
        tokio::time::timeout(LIMIT, test(uring))
            .await
            .expect("in time");
    });
}

/// Runs `test` with a `Uring` from `b` whose driver is a task of a current-thread runtime
/// (skipped before 6.13), within `LIMIT`; then waits for the driver task to end (the test
/// drops the last `Uring`).
pub fn in_the_runtime<F: std::future::Future<Output = ()>>(
    b: Builder,
    test: impl FnOnce(Uring) -> F,
) {
    let rt = current_thread();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let Some((uring, driver)) = local_uring(b) else {
            return;
        };
        let driver = tokio::task::spawn_local(driver);
        tokio::time::timeout(LIMIT, test(uring))
            .await
            .expect("in time");
        driver.await.unwrap().unwrap();
    });
}

/// Reads stream `k` (checking its pattern) until `stop_at` bytes, keeping every chunk, then
/// waits forever: a task with receives armed and buffers held, for the shutdown tests.
pub async fn read_and_hold(mut s: bufring_tokio::RecvStream, k: u64, stop_at: u64, keep: Uring) {
    let _keep = keep;
    let mut held = Vec::new();
    let mut check = Checker::new(k);
    while check.pos < stop_at {
        let Some(item) = next(&mut s).await else {
            break;
        };
        let c = item.unwrap();
        check.check(&c);
        held.push(c);
    }
    std::future::pending::<()>().await;
}

/// Every test finishes within this.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Threads of this process named like the driver thread.
pub fn driver_threads() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "bufring-tokio")
        .count()
}

/// A `Uring` in the in-runtime mode (`build_local`), or `None` (and a message) where the kernel
/// has no usable readiness fd (before 6.13) or refuses io_uring; BUFRING_REQUIRE_URING=1 fails
/// on an io_uring refusal, not on an old kernel. Call inside a runtime with I/O.
pub fn local_uring(b: Builder) -> Option<(Uring, bufring_tokio::LocalDriver)> {
    match b.build_local() {
        Ok(u) => Some(u),
        Err(e) if no_readiness_fd(&e) => {
            eprintln!("SKIPPED: this kernel has no readiness fd for a deferring ring ({e})");
            None
        }
        Err(e) => {
            // io_uring itself refused: as `uring`.
            uring(Builder::default())?;
            panic!("build_local: {e}");
        }
    }
}

/// The error `build_local` gives on kernels before 6.13.
pub fn no_readiness_fd(e: &io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|i| i.downcast_ref::<bufring::Error>()),
        Some(bufring::Error::Unsupported {
            feature: bufring::Feature::DeferredEventfd
        })
    )
}

/// An echo client: uploads `bytes` of its pattern in uneven pieces while it reads the echo back
/// and checks it, then shuts down its side and expects end of stream after the last byte.
pub async fn echo_client(addr: std::net::SocketAddr, seed: u64, bytes: usize) -> u64 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let writer = async move {
        let mut at = 0;
        let mut piece = 1000 + seed as usize * 37;
        while at < bytes {
            let n = piece.min(bytes - at);
            wr.write_all(&fill(seed, at as u64, n)).await.unwrap();
            at += n;
            piece = (piece * 7) % 50_000 + 1;
        }
        wr.shutdown().await.unwrap();
    };
    let reader = async move {
        let mut check = Checker::new(seed);
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = rd.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            check.check(&buf[..n]);
        }
        check.pos
    };
    let ((), got) = tokio::join!(writer, reader);
    got
}

/// The server side of an echo: sends every chunk back through the driver (no copy) until the
/// end of stream; returns the bytes echoed. Dropping the stream then closes the socket once
/// the echo has gone.
pub async fn echo_stream(mut stream: bufring_tokio::RecvStream) -> u64 {
    let mut echoed = 0u64;
    while let Some(item) = stream.recv().await {
        let chunk = item.expect("no receive error in an echo");
        echoed += chunk.len() as u64;
        stream.send(chunk).await.unwrap();
    }
    echoed
}

/// A stream whose driver stopped (with `before` received and unread): yields what was
/// received, an error item (ConnectionAborted), then the end; sends fail; the peer sees the
/// socket closed.
pub async fn expect_ended_by_driver(
    s: &mut bufring_tokio::RecvStream,
    peer: &mut TcpStream,
    before: &[u8],
) {
    let mut got = Vec::new();
    let err = loop {
        match tokio::time::timeout(LIMIT, next(s)).await.unwrap() {
            Some(Ok(c)) => got.extend_from_slice(&c),
            Some(Err(e)) => break e,
            None => panic!("the end without the error"),
        }
    };
    assert_eq!(got, before);
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert!(next(s).await.is_none());
    assert!(s.send_bytes(b"x".to_vec()).await.is_err());
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(10), peer.read(&mut buf))
        .await
        .expect("the peer sees the close")
        .unwrap_or(0);
    assert_eq!(n, 0);
}
