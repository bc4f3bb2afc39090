//! `bufring proxy` as a user runs it: the built binary in front of a Rust echo server on
//! loopback, statistics on SIGUSR1, a graceful stop with exit status 0 on SIGTERM, and data
//! forwarded with `--bundles`. Every wait has a timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bufring");
const T: Duration = Duration::from_secs(10);

fn uring_ok() -> bool {
    match io_uring::IoUring::new(4) {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("BUFRING_REQUIRE_URING").as_deref() == Ok("1") {
                panic!("io_uring unavailable ({e}) and BUFRING_REQUIRE_URING=1");
            }
            eprintln!("SKIPPED: io_uring unavailable here ({e})");
            false
        }
    }
}

/// An echo server for `n` connections, on its own thread.
fn echo(n: usize) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut s, _)) = l.accept() else { return };
            s.set_read_timeout(Some(T)).unwrap();
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                while let Ok(k) = s.read(&mut b) {
                    if k == 0 || s.write_all(&b[..k]).is_err() {
                        break;
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// Kills the child if the test fails half-way.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: plain syscall on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// Lines of the child's stderr, read on a thread so no wait can hang.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `what`; returns it.
fn expect_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(what) => return l,
            Ok(_) => {}
            Err(_) => panic!("no line with {what:?} from the proxy"),
        }
    }
}

#[test]
fn proxy_binary_forwards_reports_and_stops_on_sigterm() {
    if !uring_ok() {
        return;
    }
    let upstream = echo(2);
    let mut child = Proc(
        Command::new(BIN)
            .args(["proxy", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(upstream.to_string())
            .args(["--threads", "2", "--buffers", "64", "--buf-size", "16384"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let rx = lines(&mut child.0);
    let first = expect_line(&rx, "listening on ");
    let addr = first
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap()
        .to_string();

    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.set_nodelay(true).unwrap();
    for i in 0..50 {
        let msg = format!("request {i}");
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }

    signal(&child.0, libc::SIGUSR1);
    let total = expect_line(&rx, "total: ");
    assert!(total.contains("1 accepted"), "{total}");

    // SIGTERM with a connection still open: stop accepting, let it finish, exit 0.
    signal(&child.0, libc::SIGTERM);
    expect_line(&rx, "shutting down");
    s.write_all(b"last words").unwrap();
    let mut back = [0u8; 10];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"last words");
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "proxy did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "exit status {status}");
    let exit = expect_line(&rx, "total: ");
    assert!(exit.contains("1 closed"), "{exit}");
    assert!(exit.contains("client->upstream 500"), "{exit}");
}

#[test]
fn bundles_flag_forwards_data() {
    if !uring_ok() {
        return;
    }
    if !bufring::Probe::run().is_ok_and(|p| p.bundles) {
        eprintln!("SKIPPED: this kernel has no bundle receives");
        return;
    }
    let upstream = echo(1);
    let mut child = Proc(
        Command::new(BIN)
            .args(["proxy", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(upstream.to_string())
            .args(["--threads", "1", "--buffers", "64", "--buf-size", "4096"])
            .args(["--bundles", "on"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let rx = lines(&mut child.0);
    let first = expect_line(&rx, "listening on ");
    assert!(first.contains("bundles on"), "{first}");
    let addr = first
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap()
        .to_string();

    // 512 KiB each way through 4 KiB buffers, written and read at once.
    let data: Vec<u8> = (0..512 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut w = s.try_clone().unwrap();
    let out = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&out).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    (&s).read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert!(
        back == data,
        "bytes differ ({} of {})",
        back.len(),
        data.len()
    );

    signal(&child.0, libc::SIGTERM);
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "proxy did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "exit status {status}");
    let exit = expect_line(&rx, "total: ");
    assert!(exit.contains("client->upstream 524288"), "{exit}");
    assert!(exit.contains("upstream->client 524288"), "{exit}");
    // Every receive went through the bundle path.
    assert!(
        exit.contains(" bundles;") && !exit.contains(" 0 bundles;"),
        "{exit}"
    );
}
