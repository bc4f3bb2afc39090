//! The proxy against broken and hostile peers, in this process on loopback: an upstream that
//! drops SYNs, one that accepts and never answers, a client that resets while its receive is
//! paused, forced closes, slow readers beside normal clients, and flag checks. Every wait has a
//! timeout; every test says what it proves.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bufring::Incremental;

use super::tests::{
    config, connect, eventually, join_or_dump, pattern, read_all, send_all, set_rcvbuf, stop,
    uring_ok, Upstream, T,
};
use super::{Args, Config, Proxy};

/// Reads until the end: the error if the stream ended with one (a reset), else `Ok(bytes)`.
fn read_until_end(s: &mut TcpStream) -> std::io::Result<usize> {
    let mut buf = [0u8; 16 * 1024];
    let mut n = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `l` lives across the call; its size is passed.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
}

/// Sends `request` through the proxy at `addr` and expects a reset after a timeout of 300 ms
/// (not before 250 ms, well before 5 s).
fn reset_after_the_timeout(addr: SocketAddr, request: &[u8]) {
    let started = Instant::now();
    let mut c = connect(addr);
    c.write_all(request).unwrap();
    let e = read_until_end(&mut c).unwrap_err();
    let after = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_secs(5),
        "{after:?}"
    );
}

/// `addr` as the kernel reads it (IPv4 only: the tests here use 127.0.0.1).
fn sockaddr_v4(addr: SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(a) = addr else {
        panic!("{addr} is not IPv4")
    };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// An upstream that drops SYNs: a listener with a backlog of 0, filled by connections nobody
/// accepts. A connect to it neither succeeds nor fails until the SYN retries give up (minutes).
/// Returns what must stay open, and the address.
fn blackhole() -> (Vec<OwnedFd>, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    // SAFETY: listen(2) on a socket we own.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
    let mut keep = vec![OwnedFd::from(l)];
    for _ in 0..2 {
        // SAFETY: a fresh socket, owned at once.
        let fd = unsafe {
            OwnedFd::from_raw_fd(libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            ))
        };
        let sa = sockaddr_v4(addr);
        // SAFETY: a live sockaddr_in of the size given.
        unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        keep.push(fd);
    }
    std::thread::sleep(Duration::from_millis(50));
    (keep, addr)
}

/// Proves a SYN-blackholed upstream costs a client the connect timeout, not forever: the
/// client gets a reset once it passes, and the pair and its descriptors are gone.
#[test]
fn blackholed_upstream_times_out_and_resets_the_client() {
    if !uring_ok() {
        return;
    }
    let (_keep, addr) = blackhole();
    let mut cfg = config(addr, Incremental::Auto);
    cfg.connect_timeout = Some(Duration::from_millis(300));
    let proxy = Proxy::start(cfg).unwrap();
    reset_after_the_timeout(proxy.local_addr(), b"anyone there?");
    eventually("pair gone", || {
        let t = proxy.stats().total();
        t.active == 0 && t.closed == 1
    });
    let t = stop(proxy).total();
    assert_eq!((t.connect_timeouts, t.upstream_failed), (1, 1), "{t}");
}

/// Proves an upstream that accepts and never answers costs the idle timeout, then both sides
/// are reset; and that a pair where data keeps moving (slowly, one way) is never taken for idle.
#[test]
fn silent_upstream_is_reset_after_the_idle_timeout_busy_pairs_are_not() {
    if !uring_ok() {
        return;
    }
    let (tx, rx) = mpsc::channel();
    let silent = Upstream::start(move |mut s| {
        // Never answers; reports how its side ended (bounded by the read timeout, 20 s).
        let _ = tx.send(read_until_end(&mut s).map_err(|e| e.kind()));
    });
    let mut cfg = config(silent.addr, Incremental::Auto);
    cfg.idle_timeout = Some(Duration::from_millis(300));
    let proxy = Proxy::start(cfg).unwrap();
    reset_after_the_timeout(proxy.local_addr(), b"GET / HTTP/1.0\r\n\r\n");
    // The upstream's side was reset too, not closed as if the client had finished.
    assert_eq!(rx.recv_timeout(T).unwrap(), Err(ErrorKind::ConnectionReset));
    eventually("pair gone", || proxy.stats().total().active == 0);
    let t = stop(proxy).total();
    assert_eq!(t.idle_closed, 1, "{t}");

    // A download read slowly: the upstream's side waits on backpressure for longer than the
    // idle timeout, but bytes keep moving on the client's side, so the pair is not idle. The
    // timeout is 1 s here (the download takes over 3 s): with 300 ms the pair was cut once in
    // three runs under QEMU's emulation on 6.12, where a thread can stall that long.
    const LEN: usize = 256 * 1024;
    let data = std::sync::Arc::new(pattern(9, LEN));
    let d = std::sync::Arc::clone(&data);
    let up = Upstream::start(move |s| send_all(s, &d));
    let mut cfg = config(up.addr, Incremental::Auto);
    cfg.idle_timeout = Some(Duration::from_secs(1));
    cfg.max_unsent = 16 * 1024;
    cfg.buf_size = 4096;
    let proxy = Proxy::start(cfg).unwrap();
    let mut c = connect(proxy.local_addr());
    set_rcvbuf(&c, 8 * 1024);
    let mut got = Vec::with_capacity(LEN);
    let mut buf = [0u8; 32 * 1024];
    let started = Instant::now();
    while got.len() < LEN {
        let n = c.read(&mut buf).expect("the slow download was cut");
        assert!(n > 0, "the slow download ended early at {}", got.len());
        got.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = proxy.stats().total();
    eprintln!("slow download: {:?}", started.elapsed());
    assert_eq!(t.idle_closed, 0, "{t}");
    assert!(got == *data, "bytes differ");
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the download should outlast the idle timeout twice"
    );
    stop(proxy);
}

/// Proves a client that resets while its receive is paused (its upstream does not read, so
/// the proxy stopped receiving from it) is noticed at once: both sides are reset and the pair
/// is gone, with no idle timeout to help. Before the driver watched paused sockets, the pair
/// and its descriptors stayed forever.
#[test]
fn client_reset_while_paused_resets_the_pair() {
    if !uring_ok() {
        return;
    }
    let (tx, rx) = mpsc::channel();
    let stuck = Upstream::start(move |s| {
        // Reads nothing for 3 s, then reports how its side ended.
        std::thread::sleep(Duration::from_secs(3));
        let mut s = s;
        let _ = tx.send(read_until_end(&mut s).map_err(|e| e.kind()));
    });
    let mut cfg = config(stuck.addr, Incremental::Auto);
    cfg.idle_timeout = None;
    cfg.threads = 1;
    let proxy = Proxy::start(cfg).unwrap();
    let c = connect(proxy.local_addr());
    // Upload until the whole path is full: the upstream's socket buffer, the proxy's unsent
    // queue, its receive queue (then the receive stops) and the client's socket buffers.
    c.set_nonblocking(true).unwrap();
    let chunk = vec![5u8; 64 * 1024];
    let mut last_progress = Instant::now();
    let deadline = Instant::now() + T;
    while last_progress.elapsed() < Duration::from_millis(300) {
        assert!(Instant::now() < deadline, "the upload never blocked");
        match (&c).write(&chunk) {
            Ok(_) => last_progress = Instant::now(),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    }
    let t = proxy.stats().total();
    assert!(t.backpressure_pauses > 0, "{t}");
    set_linger_zero(&c);
    drop(c);
    let reset_at = Instant::now();
    eventually("pair gone", || proxy.stats().total().active == 0);
    assert!(
        reset_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        reset_at.elapsed()
    );
    // The upstream sees a reset, not a clean end: the upload was cut.
    assert_eq!(rx.recv_timeout(T).unwrap(), Err(ErrorKind::ConnectionReset));
    let t = stop(proxy).total();
    assert_eq!(t.resets, 1, "{t}");
}

/// Proves a forced close (a second signal, or the drain deadline) resets both sides of a pair
/// in the middle of a transfer: neither the client nor the upstream can take the cut stream
/// for a complete one.
#[test]
fn forced_close_resets_both_sides() {
    if !uring_ok() {
        return;
    }
    let (tx, rx) = mpsc::channel();
    let up = Upstream::start(move |mut s| {
        s.write_all(b"partial answer").unwrap();
        let _ = tx.send(read_until_end(&mut s).map_err(|e| e.kind()));
    });
    let proxy = Proxy::start(config(up.addr, Incremental::Auto)).unwrap();
    let mut c = connect(proxy.local_addr());
    c.write_all(b"partial request").unwrap();
    let mut b = [0u8; 14];
    c.read_exact(&mut b).unwrap();
    eventually("request forwarded", || proxy.stats().total().bytes_up == 15);
    proxy.force();
    assert_eq!(
        read_until_end(&mut c).unwrap_err().kind(),
        ErrorKind::ConnectionReset
    );
    assert_eq!(rx.recv_timeout(T).unwrap(), Err(ErrorKind::ConnectionReset));
    let t = proxy.join(T).unwrap().total();
    assert_eq!((t.forced, t.closed), (1, 1), "{t}");
}

/// A client whose receive buffer is `rcvbuf` bytes from the start (set before connecting, so
/// the window it offers stays small: a slow reader).
fn small_window_client(addr: SocketAddr, rcvbuf: libc::c_int) -> TcpStream {
    // SAFETY: a fresh socket, owned at once by the stream.
    let s = unsafe {
        TcpStream::from_raw_fd(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))
    };
    set_rcvbuf(&s, rcvbuf);
    let sa = sockaddr_v4(addr);
    // SAFETY: a live sockaddr_in of the size given.
    let r = unsafe {
        libc::connect(
            s.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// Proves slow readers cannot starve normal clients: 48 clients with tiny windows that do not
/// read at first pin what the proxy gives them of a 1 MiB pool (the pool runs dry), while 8
/// normal clients each download 1 MiB, verified, in bounded time; then the slow ones read
/// their 256 KiB each, verified too: nothing lost.
#[test]
fn slow_readers_do_not_starve_normal_clients() {
    if !uring_ok() {
        return;
    }
    const UNIT: usize = 64 * 1024;
    // The first byte a client sends says how many 64 KiB it wants.
    let up = Upstream::start(move |mut s| {
        let mut k = [0u8; 1];
        if s.read_exact(&mut k).is_ok() {
            send_all(s, &pattern(u64::from(k[0]), usize::from(k[0]) * UNIT));
        }
    });
    let mut cfg = config(up.addr, Incremental::Auto);
    cfg.threads = 1;
    cfg.buffers = 64;
    cfg.buf_size = 16 * 1024;
    cfg.max_unsent = 64 * 1024;
    let proxy = Proxy::start(cfg).unwrap();
    let addr = proxy.local_addr();
    let slow: Vec<TcpStream> = (0..48)
        .map(|_| {
            let mut s = small_window_client(addr, 4096);
            s.write_all(&[4]).unwrap();
            s
        })
        .collect();
    // Let the slow ones fill what they can.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let normal: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = connect(addr);
                s.write_all(&[16]).unwrap();
                assert!(
                    read_all(&mut s) == pattern(16, 16 * UNIT),
                    "a normal client's bytes differ"
                );
            })
        })
        .collect();
    join_or_dump(&proxy, normal);
    let normal_time = started.elapsed();
    let mid = proxy.stats().total();
    let slow: Vec<_> = slow
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                assert!(
                    read_all(&mut s) == pattern(4, 4 * UNIT),
                    "a slow client's bytes differ"
                );
            })
        })
        .collect();
    join_or_dump(&proxy, slow);
    let t = stop(proxy).total();
    eprintln!("normal clients done in {normal_time:?}; then {mid}; at the end {t}");
    assert!(t.peak_unsent <= 64 * 1024, "{t}");
    assert_eq!(t.bytes_down, (8 * 16 + 48 * 4) as u64 * UNIT as u64);
}

/// A wrapper to parse `bufring proxy` flags as the command line does.
#[derive(clap::Parser)]
struct Cmd {
    #[command(flatten)]
    args: Args,
}

fn parse(flags: &[&str]) -> Result<Config, String> {
    use clap::Parser;
    let argv = std::iter::once("proxy").chain(flags.iter().copied());
    let cmd = Cmd::try_parse_from(argv).map_err(|e| e.to_string())?;
    Config::from_args(&cmd.args)
}

/// Proves nonsense flags are refused with a message that names the flag (nothing starts), and
/// that host names resolve.
#[test]
fn flags_are_checked() {
    let with = |extra: &[&str]| {
        let mut v = vec!["--listen", "127.0.0.1:0"];
        if !extra.contains(&"--upstream") {
            v.extend(["--upstream", "127.0.0.1:9"]);
        }
        v.extend_from_slice(extra);
        parse(&v)
    };
    assert!(with(&[]).is_ok());
    for (extra, names) in [
        (&["--upstream", "127.0.0.1:0"][..], "--upstream"),
        (&["--upstream", "0.0.0.0:80"][..], "--upstream"),
        (&["--upstream", "no-such-host.invalid:80"][..], "--upstream"),
        (&["--max-connections", "0"][..], "--max-connections"),
        (&["--threads", "0"][..], "--threads"),
        (&["--threads", "100000"][..], "--threads"),
        (&["--buf-size", "0"][..], "--buf-size"),
        (&["--buffers", "0"][..], "--buffers"),
        (
            &["--buf-size", "65536", "--max-unsent", "4096"][..],
            "--max-unsent",
        ),
        (&["--connect-timeout=-1"][..], "--connect-timeout"),
        (&["--idle-timeout", "NaN"][..], "--idle-timeout"),
        (&["--drain-timeout", "1e300"][..], "--drain-timeout"),
    ] {
        let e = with(extra).expect_err(&format!("{extra:?} accepted"));
        assert!(e.contains(names), "{extra:?}: {e}");
    }
    // A name resolves (where this machine can resolve "localhost": the kernel matrix's
    // guests have no /etc/hosts).
    use std::net::ToSocketAddrs;
    if ("localhost", 80).to_socket_addrs().is_ok() {
        let cfg = with(&["--upstream", "localhost:8080"]).unwrap();
        assert!(cfg.upstream.ip().is_loopback() && cfg.upstream.port() == 8080);
    } else {
        eprintln!("SKIPPED: the name check (\"localhost\" does not resolve here)");
    }
    // 0 turns a timeout off.
    let cfg = with(&["--idle-timeout", "0", "--connect-timeout", "0"]).unwrap();
    assert_eq!((cfg.idle_timeout, cfg.connect_timeout), (None, None));
}
