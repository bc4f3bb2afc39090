//! The driver on the real kernel, over TCP on loopback: an echo server on the driver with
//! verified data, its policy under pressure (tiny pools both ways, slow readers beside normal
//! clients, memory under steady load), waking on a chunk dropped elsewhere, timeouts, resets,
//! and bad handles. Every test says what it proves.

mod common;

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bufring::driver::{Driver, DriverBuilder, Event, PoolId, Received, SocketId};
use bufring::{Backend, Error, Incremental, Pool};
use common::{Checker, Pattern};

/// A driver, or `None` (and a message) where the kernel refuses io_uring.
fn driver(b: DriverBuilder) -> Option<Driver> {
    common::uring(8)?;
    Some(b.build().expect("driver"))
}

/// The echo server's reaction to one event: receive on accepted sockets, and move data from
/// each socket's receive queue to its send queue while fewer than `max_unsent` bytes wait to
/// be sent (backpressure: past it, data stays queued and the quota stops the receive).
fn echo(d: &mut Driver, pool: PoolId, max_unsent: usize, ev: Event) {
    let s = match ev {
        Event::Accepted { socket, .. } => {
            d.recv(socket, pool).unwrap();
            socket
        }
        Event::Readable { socket } | Event::Sent { socket } => socket,
        // Every peer here reads all it is sent: a failed send is lost data.
        Event::SendFailed { socket, error } => panic!("a send on {socket:?} failed: {error}"),
        _ => return,
    };
    pump(d, s, max_unsent);
}

fn pump(d: &mut Driver, s: SocketId, max_unsent: usize) {
    while d.unsent(s).is_ok_and(|u| u < max_unsent) {
        match d.read(s) {
            Ok(Some(Received::Data(c))) => d.send(s, c).unwrap(),
            Ok(Some(Received::End)) => d.close(s).unwrap(),
            Ok(Some(Received::Error(_))) => d.reset(s).unwrap(),
            Ok(None) | Err(_) => break,
        }
    }
}

/// Runs the driver until `s` has at least `n` bytes queued (at most 5 s).
fn wait_queued(d: &mut Driver, s: SocketId, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.queued(s).unwrap() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} bytes: {:?} {:?}",
            d.queued(s).unwrap(),
            d.stats(),
            d.pool_stats()
        );
        d.run_once(Some(Duration::from_millis(20))).unwrap();
    }
}

/// Runs the echo server until every client has finished, each having checked `want` bytes.
fn echo_until_done(
    d: &mut Driver,
    pool: PoolId,
    max_unsent: usize,
    limit: Duration,
    clients: Vec<thread::JoinHandle<usize>>,
    want: usize,
) {
    let mut clients: Vec<_> = clients.into_iter().map(Some).collect();
    run_until(
        d,
        limit,
        |d, ev| echo(d, pool, max_unsent, ev),
        |_| {
            for c in clients.iter_mut() {
                if c.as_ref().is_some_and(|h| h.is_finished()) {
                    assert_eq!(c.take().unwrap().join().unwrap(), want);
                }
            }
            clients.iter().all(Option::is_none)
        },
    );
}

/// Runs the driver until `done` says so, handing every event to `on_event`; fails after
/// `limit`.
fn run_until(
    d: &mut Driver,
    limit: Duration,
    mut on_event: impl FnMut(&mut Driver, Event),
    mut done: impl FnMut(&Driver) -> bool,
) {
    let deadline = Instant::now() + limit;
    while !done(d) {
        assert!(
            Instant::now() < deadline,
            "not done in {limit:?}: {:?} {:?}\n{}",
            d.stats(),
            d.pool_stats(),
            d.dump()
        );
        d.run_once(Some(Duration::from_millis(50))).unwrap();
        while let Some(ev) = d.next_event() {
            on_event(d, ev);
        }
    }
}

/// A client that uploads `total` bytes of a pattern while it downloads and checks the echo,
/// both at once; `read_delay` slows its reading. Returns the bytes it checked.
fn client(
    addr: SocketAddr,
    total: usize,
    seed: u64,
    read_delay: Duration,
) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let w = s.try_clone().unwrap();
        let writer = thread::spawn(move || common::send_pattern(w, total, 16 * 1024, seed));
        let mut check = Checker::new(seed);
        let mut buf = vec![0u8; 16 * 1024];
        let mut r = &s;
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            check.check(&buf[..n]);
            if !read_delay.is_zero() {
                thread::sleep(read_delay);
            }
        }
        writer.join().unwrap().unwrap();
        check.received
    })
}

fn listen(d: &mut Driver) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    d.listen(l).unwrap();
    addr
}

/// Proves the driver serves many connections at once with every byte checked, on an
/// incremental pool (kernel or emulated), and that every socket closes and frees.
#[test]
fn echo_server_serves_many_clients_verified() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let pool = d
        .add_pool(
            Pool::builder(0)
                .count(64)
                .buf_len(64 * 1024)
                .incremental(Incremental::Auto),
        )
        .unwrap();
    let addr = listen(&mut d);
    let clients: Vec<_> = (0..32)
        .map(|i| client(addr, 512 * 1024, i, Duration::ZERO))
        .collect();
    let (closed, mut finished) = (Cell::new(0), Vec::new());
    let mut clients = clients.into_iter().map(Some).collect::<Vec<_>>();
    run_until(
        &mut d,
        Duration::from_secs(60),
        |d, ev| {
            if matches!(ev, Event::Closed { .. }) {
                closed.set(closed.get() + 1);
            }
            echo(d, pool, 256 * 1024, ev);
        },
        |_| {
            for c in clients.iter_mut() {
                if c.as_ref().is_some_and(|h| h.is_finished()) {
                    finished.push(c.take().unwrap().join().unwrap());
                }
            }
            finished.len() == 32 && closed.get() == 32
        },
    );
    assert!(finished.iter().all(|&n| n == 512 * 1024));
    let s = d.stats();
    assert_eq!(s.sockets, 0);
    assert_eq!(s.stray, 0);
    assert_eq!(s.rejected, 0);
}

/// Proves the driver serves a pool on legacy provided buffers (what `Backend::Auto` picks
/// before Linux 5.19) with the same code: it hands the buffers over with PROVIDE_BUFFERS after
/// each publish, and takes them back when it goes, so nothing leaks.
#[test]
fn echo_server_on_legacy_provided_buffers() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let before = bufring::leaks();
    let pool = d
        .add_pool(
            Pool::builder(0)
                .count(32)
                .buf_len(16 * 1024)
                .backend(Backend::Legacy),
        )
        .unwrap();
    assert_eq!(d.pool(pool).unwrap().backend(), Backend::Legacy);
    let addr = listen(&mut d);
    let clients = (0..8)
        .map(|i| client(addr, 256 * 1024, 40 + i, Duration::ZERO))
        .collect();
    echo_until_done(
        &mut d,
        pool,
        64 * 1024,
        Duration::from_secs(60),
        clients,
        256 * 1024,
    );
    drop(d);
    assert_eq!(
        bufring::leaks(),
        before,
        "the legacy buffers were taken back"
    );
}

/// A driver with a pool built for bundles (64 buffers of 4 KiB), or `None` (and a message)
/// where the kernel has no bundles or refuses io_uring.
fn bundle_driver() -> Option<(Driver, PoolId)> {
    let mut d = driver(Driver::builder())?;
    match d.add_pool(Pool::builder(0).count(64).buf_len(4096).bundles(true)) {
        Ok(p) => Some((d, p)),
        Err(Error::Unsupported { feature }) => {
            eprintln!("SKIPPED: no bundles here ({feature})");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Proves a pool built for bundles serves the driver's receives as bundles (one completion,
/// several buffers, every chunk queued in order): 8 clients echo 512 KiB each, checked.
#[test]
fn echo_server_on_a_bundle_pool() {
    let Some((mut d, pool)) = bundle_driver() else {
        return;
    };
    let addr = listen(&mut d);
    let clients = (0..8)
        .map(|i| client(addr, 512 * 1024, 70 + i, Duration::ZERO))
        .collect();
    echo_until_done(
        &mut d,
        pool,
        256 * 1024,
        Duration::from_secs(60),
        clients,
        512 * 1024,
    );
    let s = d.pool_stats()[0];
    eprintln!("{s:?}");
    assert!(s.bundles > 0, "no bundle completion: {s:?}");
}

/// Proves bundles go to bulk sockets only: on a pool built for bundles, small messages are
/// received by single-buffer receives (bundles cost small messages), a bulk transfer switches
/// the socket to bundle receives (and completions bring several buffers), and small messages
/// after it switch it back. Every byte is checked.
#[test]
fn bundles_go_to_bulk_sockets_only() {
    let Some((mut d, pool)) = bundle_driver() else {
        return;
    };
    let (a, mut peer) = common::tcp_pair();
    let s = d.socket(a);
    d.recv(s, pool).unwrap();
    let mut seq = 0u8;
    // Sends `len` bytes of the running pattern and reads them back from the driver.
    let mut round = |d: &mut Driver, len: usize| {
        let msg: Vec<u8> = (0..len).map(|k| seq.wrapping_add(k as u8)).collect();
        peer.write_all(&msg).unwrap();
        wait_queued(d, s, len);
        let mut got = Vec::new();
        while let Some(Received::Data(c)) = d.read(s).unwrap() {
            got.extend_from_slice(&c);
        }
        assert_eq!(got, msg, "bytes differ");
        seq = seq.wrapping_add(len as u8);
    };
    for _ in 0..20 {
        round(&mut d, 100);
    }
    let small = d.stats();
    assert!(small.receives_armed >= 1);
    assert_eq!(
        small.bundle_receives, 0,
        "small messages got bundles: {small:?}"
    );
    round(&mut d, 256 * 1024);
    let bulk = d.stats();
    assert!(
        bulk.bundle_receives > 0,
        "a bulk transfer got no bundles: {bulk:?}"
    );
    assert!(
        d.pool_stats()[0].bundles > 0,
        "no completion brought several buffers"
    );
    for _ in 0..20 {
        round(&mut d, 100);
    }
    let after = d.stats();
    assert!(
        after.bundle_receives <= bulk.bundle_receives + 2,
        "small messages after the bulk transfer kept getting bundles: {bulk:?} then {after:?}"
    );
    eprintln!(
        "receives armed {} (bundles {}) after small messages, {} ({}) after the bulk transfer, {} ({}) at the end",
        small.receives_armed,
        small.bundle_receives,
        bulk.receives_armed,
        bulk.bundle_receives,
        after.receives_armed,
        after.bundle_receives
    );
}

/// Proves a tiny pool (4 buffers of 4 KiB) cannot deadlock with traffic both ways: 8 clients
/// upload and download 1 MiB each at once through an echo server whose clients read slowly,
/// three runs, every byte checked. Spills move held chunks to the heap when the pool is dry,
/// and never while buffers are free.
#[test]
fn tiny_pool_both_ways_completes() {
    for run in 0..3 {
        let Some(mut d) = driver(Driver::builder().recv_quota(4096, 16 * 1024)) else {
            return;
        };
        let pool = d
            .add_pool(Pool::builder(run).count(4).buf_len(4096))
            .unwrap();
        let addr = listen(&mut d);
        let clients = (0..8)
            .map(|i| client(addr, 1 << 20, 100 + i, Duration::from_micros(200)))
            .collect();
        echo_until_done(
            &mut d,
            pool,
            64 * 1024,
            Duration::from_secs(120),
            clients,
            1 << 20,
        );
        eprintln!("run {run}: {:?}", d.stats());
    }
}

/// Proves a spill frees buffers that unread data holds, without losing or changing a byte:
/// socket A's two chunks fill a 2-buffer pool and stay unread; data for socket B then finds the
/// ring empty, the driver copies A's chunks to the heap, and B receives. A reads its bytes
/// intact afterwards.
#[test]
fn spill_moves_unread_chunks_and_keeps_their_bytes() {
    let Some(mut d) = driver(Driver::builder().elastic(false)) else {
        return;
    };
    let pool = d.add_pool(Pool::builder(0).count(2).buf_len(4096)).unwrap();
    let (a, mut pa) = common::tcp_pair();
    let (b, mut pb) = common::tcp_pair();
    let (sa, sb) = (d.socket(a), d.socket(b));
    d.recv(sa, pool).unwrap();
    d.recv(sb, pool).unwrap();
    let mut pattern = Pattern::new(7);
    let mut sent = vec![0u8; 8192];
    pattern.fill(&mut sent);
    for half in sent.chunks(4096) {
        pa.write_all(half).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let want = d.queued(sa).unwrap() + 4096;
        while d.queued(sa).unwrap() < want {
            assert!(
                Instant::now() < deadline,
                "{} {:?} {:?}",
                d.queued(sa).unwrap(),
                d.stats(),
                d.pool_stats()
            );
            d.run_once(Some(Duration::from_millis(20))).unwrap();
        }
    }
    pb.write_all(b"for B").unwrap();
    wait_queued(&mut d, sb, 5);
    assert_eq!(d.stats().spilled_chunks, 2, "{:?}", d.stats());
    assert_eq!(d.stats().spilled_bytes, 8192);
    let mut got = Vec::new();
    while let Some(Received::Data(c)) = d.read(sa).unwrap() {
        assert!(!c.in_pool(), "a spilled chunk lives on the heap");
        got.extend_from_slice(&c);
    }
    assert_eq!(got, sent);
    match d.read(sb).unwrap() {
        Some(Received::Data(c)) => assert_eq!(&c[..], b"for B"),
        other => panic!("{other:?}"),
    }
    drop((pa, pb));
}

/// Proves a send blocked on a peer that does not read gives its pool chunk up when the pool is
/// dry: A echoes 48 KiB from the pool's only buffer to a peer that reads nothing (small socket
/// buffers), so the send blocks holding the buffer; data for B then finds the ring empty with
/// nothing else to spill. The driver cancels the send, moves the chunk to the heap and sends it
/// again; B receives, and A's peer later reads every byte in order.
#[test]
fn spill_cancels_a_blocked_send_and_resends_from_the_heap() {
    let Some(mut d) = driver(Driver::builder().elastic(false)) else {
        return;
    };
    let pool = d
        .add_pool(Pool::builder(0).count(1).buf_len(64 * 1024))
        .unwrap();
    // A's peer has a 4 KiB receive buffer from before the connect, A a 4 KiB send buffer.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut pa = small_rcvbuf_client(l.local_addr().unwrap());
    let (a, _) = l.accept().unwrap();
    set_int_opt(&a, libc::SO_SNDBUF, 4096);
    let (b, mut pb) = common::tcp_pair();
    let (sa, sb) = (d.socket(a), d.socket(b));
    d.recv(sa, pool).unwrap();
    let mut sent = vec![0u8; 48 * 1024];
    Pattern::new(9).fill(&mut sent);
    pa.write_all(&sent).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut echoed = 0;
    while echoed < sent.len() {
        assert!(
            Instant::now() < deadline,
            "{:?} {:?}",
            d.stats(),
            d.pool_stats()
        );
        d.run_once(Some(Duration::from_millis(20))).unwrap();
        while let Some(Received::Data(c)) = d.read(sa).unwrap() {
            echoed += c.len();
            d.send(sa, c).unwrap();
        }
        while d.next_event().is_some() {}
    }
    // Let the send block.
    for _ in 0..5 {
        d.run_once(Some(Duration::from_millis(20))).unwrap();
    }
    assert!(
        d.unsent(sa).unwrap() > 0,
        "the peer's buffers took everything"
    );
    // B starts receiving now: its receive finds the ring empty.
    d.recv(sb, pool).unwrap();
    pb.write_all(b"for B").unwrap();
    wait_queued(&mut d, sb, 5);
    assert!(d.stats().spill_cancels >= 1, "{:?}", d.stats());
    // A's peer now reads everything, in order.
    let reader = thread::spawn(move || {
        let mut got = vec![0u8; 48 * 1024];
        pa.read_exact(&mut got).unwrap();
        got
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "{:?}", d.stats());
        d.run_once(Some(Duration::from_millis(20))).unwrap();
    }
    assert!(
        reader.join().unwrap() == sent,
        "A's peer got other bytes than were sent"
    );
    drop(pb);
}

/// Proves spilling never happens while the pool has buffers to give: a pool large enough for
/// the traffic serves it without a single spill.
#[test]
fn no_spill_while_buffers_are_free() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let pool = d
        .add_pool(Pool::builder(0).count(256).buf_len(16 * 1024))
        .unwrap();
    let addr = listen(&mut d);
    let clients = (0..4)
        .map(|i| client(addr, 1 << 20, i, Duration::ZERO))
        .collect();
    echo_until_done(
        &mut d,
        pool,
        256 * 1024,
        Duration::from_secs(60),
        clients,
        1 << 20,
    );
    assert_eq!(d.stats().spilled_chunks, 0, "{:?}", d.stats());
}

/// Proves slow readers cannot starve normal clients: 200 clients that upload up to 256 KiB and
/// never read the echo (4 KiB socket buffers on both ends) leave the server holding far more
/// than its pool (32 buffers of 16 KiB) in unsent and unread chunks, while 10 normal clients each
/// echo 1 MiB. Every normal client finishes: the slow readers' chunks move to the heap, bounded
/// by their send limit and quota.
#[test]
fn slow_readers_do_not_starve_normal_clients() {
    let Some(mut d) = driver(Driver::builder().recv_quota(16 * 1024, 64 * 1024)) else {
        return;
    };
    let pool = d
        .add_pool(Pool::builder(0).count(32).buf_len(16 * 1024))
        .unwrap();
    let addr = listen(&mut d);
    let (tx, rx) = mpsc::channel();
    let slow = thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..200 {
            let s = small_rcvbuf_client(addr);
            // Upload what the connection takes, up to 256 KiB, without blocking.
            s.set_nonblocking(true).unwrap();
            let block = vec![7u8; 16 * 1024];
            let mut w = &s;
            for _ in 0..16 {
                if w.write(&block).is_err() {
                    break;
                }
            }
            held.push(s);
        }
        tx.send(()).unwrap();
        // Hold them (never reading) until told to go.
        thread::sleep(Duration::from_secs(400));
        drop(held);
    });
    // Let the slow readers pile up first.
    let accepted = std::cell::RefCell::new(Vec::new());
    let mut small_sndbuf = |d: &mut Driver, ev: Event| {
        if let Event::Accepted { socket, .. } = ev {
            set_int_opt(&d.fd(socket).unwrap(), libc::SO_SNDBUF, 4096);
            accepted.borrow_mut().push(socket);
        }
        echo(d, pool, 64 * 1024, ev)
    };
    let mut ready = false;
    run_until(&mut d, Duration::from_secs(180), &mut small_sndbuf, |_| {
        ready = ready || rx.try_recv().is_ok();
        ready
    });
    let start = Instant::now();
    let mut clients: Vec<_> = (0..10)
        .map(|i| Some(client(addr, 1 << 20, 500 + i, Duration::ZERO)))
        .collect();
    let mut done = 0;
    run_until(&mut d, Duration::from_secs(180), &mut small_sndbuf, |_| {
        for c in clients.iter_mut() {
            if c.as_ref().is_some_and(|h| h.is_finished()) {
                assert_eq!(c.take().unwrap().join().unwrap(), 1 << 20);
                done += 1;
            }
        }
        done == 10
    });
    let s = d.stats();
    eprintln!("normal clients done in {:?}: {s:?}", start.elapsed());
    assert!(
        s.spilled_chunks > 0,
        "the slow readers held more than the pool: {s:?}"
    );
    // Bounded: each slow reader holds at most its unsent limit (plus one chunk) and its
    // receive quota (16 KiB here, the floor), which kernels without a byte limit on multishot
    // receives (before 6.17) can overshoot by one burst: at most the pool's 512 KiB.
    let slow_ids: Vec<SocketId> = accepted.borrow()[..200].to_vec();
    let (mut queued, mut unsent) = (0, 0);
    for s in slow_ids {
        let (q, u) = (d.queued(s).unwrap(), d.unsent(s).unwrap());
        assert!(u <= (64 + 16) * 1024, "{u} bytes unsent");
        assert!(q <= (16 + 512) * 1024, "{q} bytes queued");
        (queued, unsent) = (queued + q, unsent + u);
    }
    eprintln!(
        "slow readers hold {} KiB unread and {} KiB unsent",
        queued / 1024,
        unsent / 1024
    );
    drop(slow); // the thread sleeps; the process ends the test without waiting
}

/// A client socket connected to `addr` whose receive buffer was set to 4 KiB before the
/// connect (so the window stays small).
fn small_rcvbuf_client(addr: SocketAddr) -> TcpStream {
    // SAFETY: socket(2) makes a fresh fd, which the stream then owns.
    let s = unsafe {
        <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))
    };
    set_int_opt(&s, libc::SO_RCVBUF, 4096);
    let sa = socket2_addr(addr);
    // SAFETY: connect(2) with a live sockaddr_in of the size given.
    let r = unsafe {
        libc::connect(
            s.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    s
}

fn set_int_opt(s: &impl AsRawFd, opt: libc::c_int, v: libc::c_int) {
    // SAFETY: setsockopt(2) with a live int of the size given.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            4,
        )
    };
}

fn socket2_addr(addr: SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(a) = addr else {
        panic!("IPv4 only")
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

/// Proves memory follows traffic: under steady small request/response load on a pool of 256
/// buffers of 64 KiB (16 MiB), elastic posting keeps the pool's resident memory to a few
/// buffers, parks the rest and gives idle pages back; without it, the ring rotates through every
/// buffer and the whole pool becomes resident.
#[test]
fn memory_follows_traffic_under_steady_load() {
    let mut resident = Vec::new();
    for elastic in [true, false] {
        let Some(mut d) = driver(
            Driver::builder()
                .elastic(elastic)
                .window(Duration::from_millis(100)),
        ) else {
            return;
        };
        let pool = d
            .add_pool(Pool::builder(0).count(256).buf_len(64 * 1024))
            .unwrap();
        let addr = listen(&mut d);
        let clients: Vec<_> = (0..8)
            .map(|i| {
                thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_nodelay(true).unwrap();
                    let mut p = Pattern::new(i);
                    let (mut req, mut resp) = ([0u8; 512], [0u8; 512]);
                    let end = Instant::now() + Duration::from_secs(2);
                    while Instant::now() < end {
                        p.fill(&mut req);
                        s.write_all(&req).unwrap();
                        s.read_exact(&mut resp).unwrap();
                        assert_eq!(req, resp);
                    }
                    s.shutdown(Shutdown::Write).unwrap();
                })
            })
            .map(Some)
            .collect();
        let mut clients = clients;
        let mut done = 0;
        run_until(
            &mut d,
            Duration::from_secs(30),
            |d, ev| echo(d, pool, 64 * 1024, ev),
            |_| {
                for c in clients.iter_mut() {
                    if c.as_ref().is_some_and(|h| h.is_finished()) {
                        c.take().unwrap().join().unwrap();
                        done += 1;
                    }
                }
                done == 8
            },
        );
        let bytes = d.pool(pool).unwrap().resident_bytes().unwrap();
        let ps = d.pool_stats()[0];
        eprintln!("elastic {elastic}: resident {} KiB, {ps:?}", bytes / 1024);
        if elastic {
            assert!(
                ps.posted_target < 64,
                "target {} under 8 small streams",
                ps.posted_target
            );
            assert_eq!(ps.in_kernel + ps.with_app + ps.parked, ps.buffers);
        }
        resident.push(bytes);
    }
    assert!(
        resident[0] * 4 <= resident[1],
        "elastic {} KiB against {} KiB without",
        resident[0] / 1024,
        resident[1] / 1024
    );
    assert!(
        resident[0] <= 4 << 20,
        "elastic pool holds {} KiB",
        resident[0] / 1024
    );
}

/// Proves an open connection that has gone quiet costs only its socket record: after 8
/// connections each echo 64 KiB (sendmsg batches, partial sends) and stop, with all of them
/// still open, no socket holds queues; one with unread data holds them until it is read.
/// (Small enough to run under valgrind, which checks that dropping the queues of a quiet
/// socket never frees what a send in flight still uses.)
#[test]
fn quiet_connections_keep_no_queues() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let pool = d
        .add_pool(Pool::builder(0).count(64).buf_len(16 * 1024))
        .unwrap();
    let addr = listen(&mut d);
    const N: usize = 8;
    const BYTES: usize = 64 * 1024;
    let (done_tx, done_rx) = mpsc::channel();
    let (quit_tx, quit_rx) = mpsc::channel::<()>();
    let quit_rx = std::sync::Arc::new(std::sync::Mutex::new(quit_rx));
    let clients: Vec<_> = (0..N as u64)
        .map(|i| {
            let (done_tx, quit_rx) = (done_tx.clone(), std::sync::Arc::clone(&quit_rx));
            thread::spawn(move || {
                let s = TcpStream::connect(addr).unwrap();
                let mut w = s.try_clone().unwrap();
                // The pattern, without the shutdown `send_pattern` ends with: the connection
                // stays open.
                let writer = thread::spawn(move || {
                    let (mut p, mut buf) = (Pattern::new(i), vec![0u8; 16 * 1024]);
                    for _ in 0..BYTES / buf.len() {
                        p.fill(&mut buf);
                        w.write_all(&buf)?;
                    }
                    Ok::<_, std::io::Error>(())
                });
                let mut check = Checker::new(i);
                let mut buf = vec![0u8; 16 * 1024];
                while check.received < BYTES {
                    let n = (&s).read(&mut buf).unwrap();
                    assert!(n > 0, "echo ended early");
                    check.check(&buf[..n]);
                }
                writer.join().unwrap().unwrap();
                done_tx.send(()).unwrap();
                // Stay open, quiet, until the driver has been looked at.
                let _ = quit_rx.lock().unwrap().recv();
                drop(s);
            })
        })
        .collect();
    // The driver never blocks here, and sleeps a millisecond between steps: under valgrind,
    // which runs one thread at a time and keeps its lock while a thread waits in
    // io_uring_enter, the peers would otherwise get almost no turn (it timed out there).
    let mut finished = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while finished < N || d.stats().busy_sockets > 0 {
        assert!(Instant::now() < deadline, "{:?}\n{}", d.stats(), d.dump());
        d.run_once(Some(Duration::ZERO)).unwrap();
        while let Some(ev) = d.next_event() {
            echo(&mut d, pool, 64 * 1024, ev);
        }
        finished += done_rx.try_iter().count();
        thread::sleep(Duration::from_millis(1));
    }
    let st = d.stats();
    assert_eq!(st.sockets, N as u64, "all still open: {st:?}");
    assert_eq!(st.busy_sockets, 0, "{st:?}\n{}", d.dump());

    // Data that arrives and is not read keeps its socket's queues, until it is read.
    let mut c = TcpStream::connect(addr).unwrap();
    let s = Cell::new(None);
    run_until(
        &mut d,
        Duration::from_secs(10),
        |d, ev| {
            if let Event::Accepted { socket, .. } = ev {
                d.recv(socket, pool).unwrap();
                s.set(Some(socket));
            }
        },
        |_| s.get().is_some(),
    );
    let s = s.get().unwrap();
    c.write_all(b"unread").unwrap();
    wait_queued(&mut d, s, 6);
    assert_eq!(d.stats().busy_sockets, 1);
    while let Some(Received::Data(_)) = d.read(s).unwrap() {}
    assert_eq!(d.stats().busy_sockets, 0);

    for _ in 0..N {
        quit_tx.send(()).unwrap();
    }
    for c in clients {
        c.join().unwrap();
    }
}

/// Proves the extremes of the idle timeout are taken without a panic or an overflow: zero
/// (kept as 1 ms) reports `Idle` at once; `Duration::MAX` (kept as 49 days) never fires; a
/// socket idle for a while says so in `idle_for`; turning the timeout off stops the checks.
#[test]
fn idle_timeouts_of_zero_and_duration_max() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let pool = d.add_pool(Pool::builder(0).count(4).buf_len(4096)).unwrap();
    let (a, _pa) = common::tcp_pair();
    let (b, _pb) = common::tcp_pair();
    let (zero, max) = (d.socket(a), d.socket(b));
    d.recv(zero, pool).unwrap();
    d.recv(max, pool).unwrap();
    d.set_idle_timeout(zero, Some(Duration::ZERO)).unwrap();
    d.set_idle_timeout(max, Some(Duration::MAX)).unwrap();
    let mut idle = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while idle.is_empty() {
        assert!(Instant::now() < deadline, "no Idle for a zero timeout");
        d.run_once(Some(Duration::from_millis(20))).unwrap();
        while let Some(ev) = d.next_event() {
            if let Event::Idle { socket } = ev {
                idle.push(socket);
            }
        }
    }
    assert_eq!(idle, vec![zero]);
    thread::sleep(Duration::from_millis(30));
    d.run_once(Some(Duration::ZERO)).unwrap();
    assert!(d.idle_for(max).unwrap() >= Duration::from_millis(30));
    d.set_idle_timeout(zero, None).unwrap();
    d.set_idle_timeout(max, None).unwrap();
    for _ in 0..5 {
        d.run_once(Some(Duration::from_millis(10))).unwrap();
        while let Some(ev) = d.next_event() {
            assert!(
                !matches!(ev, Event::Idle { .. }),
                "{ev:?} after the timeout went off"
            );
        }
    }
    assert_eq!(d.stats().idle_timeouts, 1);
}

/// Proves a chunk dropped on another thread wakes a driver whose receive waits for buffers:
/// the pool (2 buffers) runs dry while another thread holds every chunk; when it drops them
/// the driver, blocked in `run_once` with no other reason to wake, wakes and resumes receiving.
#[test]
fn chunk_dropped_on_another_thread_wakes_the_driver() {
    let Some(mut d) = driver(Driver::builder().elastic(false)) else {
        return;
    };
    let pool = d.add_pool(Pool::builder(0).count(2).buf_len(4096)).unwrap();
    let (a, mut b) = common::tcp_pair();
    let s = d.socket(a);
    d.recv(s, pool).unwrap();
    let (tx, rx) = mpsc::channel::<Vec<bufring::Chunk>>();
    let holder = thread::spawn(move || {
        let held = rx.recv().unwrap();
        thread::sleep(Duration::from_millis(300));
        drop(held);
    });
    // Two writes, one buffer each, taken by the application as they come; the third write
    // finds the pool dry, with nothing the driver could spill.
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    for i in 0..2 {
        b.write_all(&[1u8; 4096]).unwrap();
        while held.len() <= i {
            assert!(Instant::now() < deadline);
            d.run_once(Some(Duration::from_millis(50))).unwrap();
            while let Some(Received::Data(c)) = d.read(s).unwrap() {
                held.push(c);
            }
            while d.next_event().is_some() {}
        }
    }
    assert_eq!(held.iter().map(|c| c.len()).sum::<usize>(), 8192);
    b.write_all(&[1u8; 4096]).unwrap();
    while d.pool_stats()[0].enobufs == 0 {
        assert!(Instant::now() < deadline, "{:?}", d.pool_stats());
        d.run_once(Some(Duration::from_millis(20))).unwrap();
    }
    tx.send(held).unwrap();
    // Nothing else can wake this wait before 10 s: no timers, no elastic window, no traffic.
    let start = Instant::now();
    let mut got = 0;
    while got < 4096 {
        d.run_once(Some(Duration::from_secs(10))).unwrap();
        while let Some(Received::Data(c)) = d.read(s).unwrap() {
            got += c.len();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "not woken");
    }
    holder.join().unwrap();
    assert!(d.stats().return_wakes >= 1, "{:?}", d.stats());
    assert_eq!(
        d.stats().spilled_chunks,
        0,
        "the application held every chunk"
    );
    assert!(start.elapsed() >= Duration::from_millis(250));
}

/// Proves timers fire, a connect to an upstream that never answers times out (a listener
/// whose backlog is full drops SYNs, on loopback), and idle sockets are reported.
#[test]
fn timers_connect_timeouts_and_idle_timeouts_fire() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let t = d.timer(Duration::from_millis(30));
    // A blackhole: backlog 0 and one connection filling it.
    // SAFETY: plain socket calls on a fresh fd, with live arguments.
    let (lfd, addr) = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let mut sa = socket2_addr("127.0.0.1:0".parse().unwrap());
        assert_eq!(
            libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), 16),
            0
        );
        assert_eq!(libc::listen(fd, 0), 0);
        let mut len = 16u32;
        libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len);
        (
            fd,
            SocketAddr::from(([127, 0, 0, 1], u16::from_be(sa.sin_port))),
        )
    };
    let _filler: Vec<_> = (0..2)
        .map(|_| {
            // SAFETY: as above.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
            let sa = socket2_addr(addr);
            // SAFETY: as above.
            unsafe { libc::connect(fd, (&sa as *const libc::sockaddr_in).cast(), 16) };
            fd
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    let c = d.connect(addr, Some(Duration::from_millis(300))).unwrap();
    let (idle_a, _idle_b) = common::tcp_pair();
    let idle = d.socket(idle_a);
    let idle_set = Instant::now();
    d.set_idle_timeout(idle, Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let (timer, timed_out, idled) = (Cell::new(None), Cell::new(None), Cell::new(None));
    run_until(
        &mut d,
        Duration::from_secs(10),
        |_, ev| match ev {
            Event::Timer { timer: id } if id == t => timer.set(Some(start.elapsed())),
            Event::Connected { socket, result } if socket == c => {
                timed_out.set(Some((start.elapsed(), result.unwrap_err().kind())))
            }
            Event::Idle { socket } if socket == idle => idled.set(Some(idle_set.elapsed())),
            _ => {}
        },
        |_| timer.get().is_some() && timed_out.get().is_some() && idled.get().is_some(),
    );
    let (after, kind) = timed_out.get().unwrap();
    assert_eq!(kind, std::io::ErrorKind::TimedOut);
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_secs(3),
        "{after:?}"
    );
    assert!(
        idled.get().unwrap() >= Duration::from_millis(200),
        "{:?}",
        idled.get()
    );
    assert_eq!(d.stats().connect_timeouts, 1);
    // SAFETY: closes the fds this test opened.
    unsafe { libc::close(lfd) };
}

/// Proves a peer's reset surfaces as an error item at the end of the receive queue, and that
/// `reset` sends one (the peer reads ECONNRESET, not a clean end of stream).
#[test]
fn resets_surface_and_are_sent() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let pool = d.add_pool(Pool::builder(0).count(8).buf_len(4096)).unwrap();
    let (a, b) = common::tcp_pair();
    let s = d.socket(a);
    d.recv(s, pool).unwrap();
    (&b).write_all(b"hello").unwrap();
    set_linger_zero(&b);
    thread::sleep(Duration::from_millis(20));
    drop(b);
    let mut items = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline);
        d.run_once(Some(Duration::from_millis(20))).unwrap();
        while let Some(r) = d.read(s).unwrap() {
            items.push(r);
        }
        if matches!(items.last(), Some(Received::Error(_)) | Some(Received::End)) {
            break;
        }
    }
    match items.last() {
        Some(Received::Error(e)) => assert_eq!(e.raw_os_error(), Some(libc::ECONNRESET)),
        other => panic!("expected a reset, got {other:?}"),
    }
    // Now send one.
    let (a, mut b) = common::tcp_pair();
    let s = d.socket(a);
    d.send_bytes(s, b"partial".to_vec()).unwrap();
    d.reset(s).unwrap();
    let closed = Cell::new(false);
    run_until(
        &mut d,
        Duration::from_secs(5),
        |_, ev| closed.set(closed.get() || matches!(ev, Event::Closed { socket } if socket == s)),
        |_| closed.get(),
    );
    let mut buf = [0u8; 64];
    let r = loop {
        match b.read(&mut buf) {
            Ok(0) => break Ok(0),
            Ok(_) => continue,
            Err(e) => break Err(e),
        }
    };
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
}

/// Proves a reset reaches the application at once as `Event::Failed` while nobody reads and
/// the socket's receive is stopped at its quota (no receive in flight to notice it: the
/// driver's error watch does), and that the data queued before it is still read first.
#[test]
fn a_reset_while_the_receive_is_stopped_is_reported_at_once() {
    let Some(mut d) = driver(Driver::builder().recv_quota(64 * 1024, 64 * 1024)) else {
        return;
    };
    let pool = d
        .add_pool(Pool::builder(0).count(64).buf_len(16 * 1024))
        .unwrap();
    let (a, b) = common::tcp_pair();
    let s = d.socket(a);
    d.recv(s, pool).unwrap();
    // More than the quota: the receive stops with data left in the kernel's socket buffer.
    // Written from this thread, without blocking (no peer thread: valgrind runs this test).
    b.set_nonblocking(true).unwrap();
    let data = vec![7u8; 16 * 1024];
    let mut written = 0;
    while written < 256 * 1024 {
        match (&b).write(&data) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        written > 64 * 1024,
        "only {written} bytes fit in the socket buffers"
    );
    wait_queued(&mut d, s, 64 * 1024);
    // Let the receive's last completions in: it ends at the quota (the kernel's byte limit,
    // or a cancel).
    for _ in 0..10 {
        d.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    while d.next_event().is_some() {}
    set_linger_zero(&b);
    drop(b);
    let failed = std::cell::RefCell::new(None);
    run_until(
        &mut d,
        Duration::from_secs(5),
        |_, ev| {
            if let Event::Failed { socket, error } = ev {
                assert_eq!(socket, s);
                *failed.borrow_mut() = Some(error);
            }
        },
        |_| failed.borrow().is_some(),
    );
    let err = failed.into_inner().unwrap();
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::ECONNRESET) | Some(libc::EPIPE)
        ),
        "{err}"
    );
    // Nothing was read yet: the queued data comes first, then the error.
    let mut bytes = 0;
    let last = loop {
        match d.read(s).unwrap() {
            Some(Received::Data(c)) => bytes += c.len(),
            other => break other,
        }
    };
    assert!(bytes >= 64 * 1024, "{bytes} bytes queued before the error");
    assert!(matches!(last, Some(Received::Error(_))), "{last:?}");
    assert_eq!(d.read(s).unwrap().map(|_| ()), None);
}

/// Proves a socket connected with a connect timeout frees and reports `Closed` when closed:
/// the linked timeout's completion does not hold the socket (it did once: the socket never
/// freed, and a proxy's drain never ended).
#[test]
fn a_socket_connected_within_its_timeout_closes() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let s = d
        .connect(l.local_addr().unwrap(), Some(Duration::from_secs(5)))
        .unwrap();
    let (connected, closed) = (Cell::new(false), Cell::new(false));
    run_until(
        &mut d,
        Duration::from_secs(5),
        |d, ev| match ev {
            Event::Connected { socket, result } => {
                assert_eq!(socket, s);
                result.unwrap();
                connected.set(true);
                d.close(s).unwrap();
            }
            Event::Closed { socket } if socket == s => closed.set(true),
            _ => {}
        },
        |_| closed.get(),
    );
    assert!(connected.get());
    assert_eq!(d.stats().sockets, 0);
}

fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a live linger of the size given.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            8,
        )
    };
}

/// Proves bad handles and bad configuration get typed errors: a closed socket's id, a send
/// after shutdown, a second recv, an unknown pool, and invalid builder values.
#[test]
fn bad_handles_and_configuration_get_typed_errors() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let pool = d.add_pool(Pool::builder(0).count(4).buf_len(4096)).unwrap();
    let (a, _b) = common::tcp_pair();
    let s = d.socket(a);
    d.recv(s, pool).unwrap();
    assert!(matches!(
        d.recv(s, pool),
        Err(Error::InvalidState { op: "recv", .. })
    ));
    d.shutdown(s).unwrap();
    assert!(matches!(
        d.send_bytes(s, vec![1]),
        Err(Error::InvalidState { op: "send", .. })
    ));
    d.close(s).unwrap();
    let closed = Cell::new(false);
    run_until(
        &mut d,
        Duration::from_secs(5),
        |_, ev| closed.set(closed.get() || matches!(ev, Event::Closed { .. })),
        |_| closed.get(),
    );
    assert!(matches!(d.read(s), Err(Error::NotOpen { what: "socket" })));
    assert!(matches!(
        d.send_bytes(s, vec![1]),
        Err(Error::NotOpen { .. })
    ));
    // The slot is reused with a new id; the old one stays dead.
    let (a, _b) = common::tcp_pair();
    let s2 = d.socket(a);
    assert_ne!(s, s2);
    assert!(d.unsent(s).is_err() && d.unsent(s2).is_ok());
    // Configuration.
    for b in [
        Driver::builder().entries(0),
        Driver::builder().entries(64).cq_entries(8),
        Driver::builder().recv_quota(0, 10),
        Driver::builder().recv_quota(100, 10),
        Driver::builder().initial_posted(0),
        Driver::builder().window(Duration::ZERO),
    ] {
        assert!(matches!(b.build(), Err(Error::InvalidConfig { .. })));
    }
    assert!(matches!(
        d.add_pool(Pool::builder(1).count(4).posted(5)),
        Err(Error::InvalidConfig {
            field: "posted",
            ..
        })
    ));
}

/// Proves dropping a driver with receives armed, sends blocked and timers pending frees
/// everything without leaking: every request is cancelled and waited for first.
#[test]
fn dropping_a_busy_driver_cancels_and_frees() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let before = bufring::leaks();
    let pool = d.add_pool(Pool::builder(0).count(8).buf_len(4096)).unwrap();
    let mut peers = Vec::new();
    for _ in 0..4 {
        let (a, b) = common::tcp_pair();
        let s = d.socket(a);
        d.recv(s, pool).unwrap();
        // Never read by the peer: the send blocks once the socket buffers fill.
        d.send_bytes(s, vec![9u8; 8 << 20]).unwrap();
        peers.push(b);
    }
    let _t = d.timer(Duration::from_secs(3600));
    d.run_once(Some(Duration::from_millis(50))).unwrap();
    assert!(d.in_flight() > 4);
    drop(d);
    assert_eq!(bufring::leaks(), before);
}

/// Waits (bounded) until `fd` polls readable, as a runtime's reactor would.
fn poll_readable(fd: i32, limit: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one live pollfd.
    let r = unsafe { libc::poll(&mut p, 1, limit.as_millis() as i32) };
    r == 1 && p.revents & libc::POLLIN != 0
}

/// Proves a runtime can drive the driver without blocking in it: the readiness fd polls
/// readable when data arrives for an armed receive and when another thread wakes the driver
/// (with deferred task work, the default, where the kernel signals it, and without), and a
/// non-blocking `poll` then delivers the data and the `Woken` event.
#[test]
fn the_readiness_fd_polls_readable_for_a_runtime() {
    for defer in [true, false] {
        let Some(mut d) = driver(Driver::builder().defer_taskrun(defer)) else {
            return;
        };
        let pool = d.add_pool(Pool::builder(0).count(4).buf_len(4096)).unwrap();
        let fd = match d.readiness_fd() {
            Ok(fd) => fd.as_raw_fd(),
            Err(Error::Unsupported { feature }) => {
                // Kernels that do not wake a poller of the eventfd (6.12; 6.1 when deferring).
                assert_eq!(feature, bufring::Feature::DeferredEventfd);
                eprintln!("deferred task work {defer}: no readiness fd on this kernel ({feature})");
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let (a, mut b) = common::tcp_pair();
        let s = d.socket(a);
        d.recv(s, pool).unwrap();
        d.poll().unwrap();
        assert!(
            !poll_readable(fd, Duration::from_millis(50)),
            "readable with nothing to do (deferred task work: {defer})"
        );
        let writer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            b.write_all(b"ping").unwrap();
            b
        });
        let start = Instant::now();
        assert!(
            poll_readable(fd, Duration::from_secs(5)),
            "data came but the fd never polled readable (deferred task work: {defer})"
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "readable only at the timeout"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = None;
        while got.is_none() {
            assert!(Instant::now() < deadline);
            d.poll().unwrap();
            if let Some(Received::Data(c)) = d.read(s).unwrap() {
                got = Some(c.to_vec());
            }
        }
        assert_eq!(got.unwrap(), b"ping");
        let _b = writer.join().unwrap();
        while d.next_event().is_some() {}
        let waker = d.waker();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            waker.wake();
        });
        let start = Instant::now();
        assert!(
            poll_readable(fd, Duration::from_secs(5)),
            "woken but the fd never polled readable (deferred task work: {defer})"
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "readable only at the timeout"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline);
            d.poll().unwrap();
            if std::iter::from_fn(|| d.next_event()).any(|e| matches!(e, Event::Woken)) {
                break;
            }
        }
    }
}

/// A fresh driver with one pool (`count` buffers of 4 KiB), its readiness fd, and `conns`
/// connected sockets receiving (the driver's sides, and the peers), polled once; or `None`
/// where the kernel has no readiness fd (6.12; 6.1 when deferring: `Unsupported`).
fn readiness_setup(
    count: usize,
    conns: usize,
) -> Option<(Driver, i32, Vec<SocketId>, Vec<TcpStream>)> {
    let mut d = driver(Driver::builder())?;
    let pool = d
        .add_pool(Pool::builder(0).count(count).buf_len(4096))
        .unwrap();
    let fd = match d.readiness_fd() {
        Ok(fd) => fd.as_raw_fd(),
        Err(Error::Unsupported { feature }) => {
            eprintln!("no readiness fd on this kernel ({feature})");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    let (mut socks, mut peers) = (Vec::new(), Vec::new());
    for _ in 0..conns {
        let (a, b) = common::tcp_pair();
        let s = d.socket(a);
        d.recv(s, pool).unwrap();
        socks.push(s);
        peers.push(b);
    }
    d.poll().unwrap();
    Some((d, fd, socks, peers))
}

/// Reads every socket's queue, counting bytes and checking each socket's byte pattern (`seq`:
/// the next byte expected per socket).
fn drain_into(d: &mut Driver, socks: &[SocketId], seq: &mut [u8], got: &mut usize) {
    for (i, &s) in socks.iter().enumerate() {
        while let Some(Received::Data(c)) = d.read(s).unwrap() {
            for &b in c.iter() {
                assert_eq!(b, seq[i], "socket {i}: bytes out of order");
                seq[i] = seq[i].wrapping_add(1);
            }
            *got += c.len();
        }
    }
    while d.next_event().is_some() {}
}

/// Proves `poll` leaves work it did not take signalled: data waiting on 64 sockets at once
/// comes out over one or more polls (each takes one batch of completions, so that a runtime's
/// tasks can give buffers back in between), and after every poll either everything has been
/// delivered or the readiness fd polls readable at once, so a runtime that polls only when the
/// fd is readable gets all of it.
#[test]
fn poll_leaves_what_it_did_not_take_signalled() {
    let Some((mut d, fd, socks, mut peers)) = readiness_setup(64, 64) else {
        return;
    };
    let msg: Vec<u8> = (0..100u8).collect();
    for p in &mut peers {
        p.write_all(&msg).unwrap();
    }
    let want = 64 * msg.len();
    let (mut seq, mut got, mut polls) = (vec![0u8; 64], 0, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while got < want {
        assert!(
            Instant::now() < deadline,
            "{got} of {want} bytes after {polls} polls"
        );
        assert!(
            poll_readable(fd, Duration::from_secs(3)),
            "{got} of {want} bytes, and the readiness fd is quiet (after {polls} polls)"
        );
        d.poll().unwrap();
        polls += 1;
        drain_into(&mut d, &socks, &mut seq, &mut got);
    }
    eprintln!("{want} bytes on 64 sockets in {polls} polls");
    // A poll that brought completions cannot tell whether more wait, so it signals: a poll or
    // two later (the driver's own requests complete too) one finds nothing, and the fd goes
    // quiet rather than calling the runtime forever.
    let mut quiet_after = None;
    for extra in 0..8 {
        if !poll_readable(fd, Duration::from_millis(20)) {
            quiet_after = Some(extra);
            break;
        }
        d.poll().unwrap();
    }
    assert!(
        quiet_after.is_some_and(|n| n <= 4),
        "the fd stayed readable with nothing left ({quiet_after:?})"
    );
}

/// Proves no wake-up is lost while `poll` runs (on deferred rings it turns the kernel's
/// signals of the readiness fd off while it works and on again before its last look): a
/// thread writes 4,000 small messages to 4 sockets at uneven moments, the test waits on the
/// readiness fd as a runtime would and polls only when it is readable, and every byte arrives
/// in order; a lost wake-up shows as a quiet fd with data outstanding.
#[test]
fn no_wake_up_is_lost_while_polling() {
    let Some((mut d, fd, socks, mut peers)) = readiness_setup(16, 4) else {
        return;
    };
    const MSGS: usize = 4000;
    const LEN: usize = 50;
    let writer = thread::spawn(move || {
        let mut seq = [0u8; 4];
        // A small LCG picks the socket and the pause: no two runs need to interleave alike.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..MSGS {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let i = (x >> 33) as usize % 4;
            let msg: Vec<u8> = (0..LEN).map(|k| seq[i].wrapping_add(k as u8)).collect();
            seq[i] = seq[i].wrapping_add(LEN as u8);
            peers[i].write_all(&msg).unwrap();
            match (x >> 40) % 8 {
                0 => thread::sleep(Duration::from_micros(200)),
                1..=3 => thread::yield_now(),
                _ => {}
            }
        }
        peers
    });
    let want = MSGS * LEN;
    let (mut seq, mut got) = (vec![0u8; 4], 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < want {
        assert!(Instant::now() < deadline, "{got} of {want} bytes in 30 s");
        if !poll_readable(fd, Duration::from_secs(3)) {
            // Quiet for 3 s: the writer is long done, so anything still in the kernel is a
            // wake-up the fd never gave.
            d.poll().unwrap();
            let before = got;
            drain_into(&mut d, &socks, &mut seq, &mut got);
            panic!(
                "lost wake-up: {before} of {want} bytes, {} more were waiting",
                got - before
            );
        }
        d.poll().unwrap();
        drain_into(&mut d, &socks, &mut seq, &mut got);
    }
    let _peers = writer.join().unwrap();
}

/// Proves `stop_recv` stops receiving without losing anything: data sent while stopped stays in
/// the socket, what was queued stays readable, and `recv` picks up where it stopped, in order.
#[test]
fn stop_recv_pauses_and_recv_resumes_in_order() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let pool = d.add_pool(Pool::builder(0).count(8).buf_len(4096)).unwrap();
    let (a, mut b) = common::tcp_pair();
    let s = d.socket(a);
    d.recv(s, pool).unwrap();
    let until = |d: &mut Driver, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.queued(s).unwrap() < n {
            assert!(Instant::now() < deadline, "{} of {n}", d.queued(s).unwrap());
            d.run_once(Some(Duration::from_millis(20))).unwrap();
        }
    };
    b.write_all(b"one ").unwrap();
    until(&mut d, 4);
    d.stop_recv(s).unwrap();
    d.stop_recv(s).unwrap(); // twice is fine
    for _ in 0..5 {
        d.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    b.write_all(b"two ").unwrap();
    for _ in 0..5 {
        d.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    assert_eq!(d.queued(s).unwrap(), 4, "received while stopped");
    d.recv(s, pool).unwrap();
    b.write_all(b"three").unwrap();
    until(&mut d, 13);
    let mut got = Vec::new();
    while let Some(Received::Data(c)) = d.read(s).unwrap() {
        got.extend_from_slice(&c);
    }
    assert_eq!(got, b"one two three");
}

/// Proves `release` hands a socket back open, with no receive left to steal its data: after
/// it, bytes the peer sends are read with a plain `read`, and the old id is dead.
#[test]
fn release_hands_the_socket_back_open() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let pool = d.add_pool(Pool::builder(0).count(4).buf_len(4096)).unwrap();
    let (a, mut b) = common::tcp_pair();
    let s = d.socket(a);
    d.recv(s, pool).unwrap();
    d.run_once(Some(Duration::from_millis(10))).unwrap();
    let fd = d.release(s, Duration::from_secs(5)).unwrap();
    assert!(matches!(d.read(s), Err(Error::NotOpen { .. })));
    let mut back = TcpStream::from(fd);
    b.write_all(b"after").unwrap();
    for _ in 0..3 {
        d.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    assert!(std::iter::from_fn(|| d.next_event()).all(|e| e.socket() != Some(s)));
    let mut buf = [0u8; 5];
    back.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after");
}

/// Proves a client socket works through the driver from the start: `recv` and `send` called
/// right after `connect`, before it completes, take effect once connected.
#[test]
fn connect_then_recv_and_send_at_once() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let pool = d.add_pool(Pool::builder(0).count(4).buf_len(4096)).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let s = d
        .connect(l.local_addr().unwrap(), Some(Duration::from_secs(5)))
        .unwrap();
    d.recv(s, pool).unwrap();
    d.send_bytes(s, b"hello".to_vec()).unwrap();
    // The connect goes out with the driver's next run: accept on another thread.
    let reader = thread::spawn(move || {
        let (mut peer, _) = l.accept().unwrap();
        let mut buf = [0u8; 5];
        peer.read_exact(&mut buf).unwrap();
        peer.write_all(b"world").unwrap();
        (peer, buf)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut connected = false;
    while d.queued(s).unwrap() < 5 {
        assert!(Instant::now() < deadline, "{:?}", d.stats());
        d.run_once(Some(Duration::from_millis(20))).unwrap();
        while let Some(ev) = d.next_event() {
            if let Event::Connected { result, .. } = ev {
                result.unwrap();
                connected = true;
            }
        }
    }
    assert!(connected);
    let (_peer, got) = reader.join().unwrap();
    assert_eq!(&got, b"hello");
    match d.read(s).unwrap() {
        Some(Received::Data(c)) => assert_eq!(&c[..], b"world"),
        other => panic!("{other:?}"),
    }
}

/// Forwards what socket A receives (its peer writes 2 MiB of a pattern) to socket B, whose
/// reader has a 4 KiB window and does not read for 600 ms, moving chunks while B has less
/// than the quota unsent (as the proxy does). Returns the peak of A's receive queue plus B's
/// unsent bytes during the stall, and whether the kernel limits multishot receives to a byte
/// count; then the reader reads, and every byte must arrive in order.
fn forward_to_a_stalled_reader(linked: bool, quota: usize) -> Option<(usize, bool)> {
    const TOTAL: usize = 2 << 20;
    let mut d = driver(Driver::builder().recv_quota(quota, quota))?;
    let pool = d
        .add_pool(Pool::builder(0).count(64).buf_len(16 * 1024))
        .unwrap();
    let (a, a_peer) = common::tcp_pair();
    let writer = thread::spawn(move || common::send_pattern(a_peer, TOTAL, 64 * 1024, 7));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut reader = small_rcvbuf_client(l.local_addr().unwrap());
    let (b, _) = l.accept().unwrap();
    set_int_opt(&b, libc::SO_SNDBUF, 4096);
    let (sa, sb) = (d.socket(a), d.socket(b));
    if linked {
        d.link(sa, sb).unwrap();
    }
    d.recv(sa, pool).unwrap();
    let forward = |d: &mut Driver| {
        while d.unsent(sb).unwrap() < quota {
            match d.read(sa).unwrap() {
                Some(Received::Data(c)) => d.send(sb, c).unwrap(),
                Some(Received::End) => {
                    d.shutdown(sb).unwrap();
                    break;
                }
                Some(Received::Error(e)) => panic!("{e}"),
                None => break,
            }
        }
    };
    let mut peak = 0;
    let stall = Instant::now() + Duration::from_millis(600);
    while Instant::now() < stall {
        d.run_once(Some(Duration::from_millis(10))).unwrap();
        while d.next_event().is_some() {}
        forward(&mut d);
        peak = peak.max(d.queued(sa).unwrap() + d.unsent(sb).unwrap());
    }
    let check = thread::spawn(move || {
        let mut c = Checker::new(7);
        let mut buf = vec![0u8; 64 * 1024];
        while c.received < TOTAL {
            let n = reader.read(&mut buf).unwrap();
            assert!(n > 0, "the stream ended after {} bytes", c.received);
            c.check(&buf[..n]);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check.is_finished() {
        assert!(Instant::now() < deadline, "stuck: {}", d.dump());
        d.run_once(Some(Duration::from_millis(10))).unwrap();
        while d.next_event().is_some() {}
        forward(&mut d);
    }
    check.join().unwrap();
    writer.join().unwrap().unwrap();
    Some((peak, d.recv_limited()))
}

/// Linked sockets (`Driver::link`) hold one quota per direction: a forwarder to a stalled
/// reader keeps A's queue plus B's unsent within the quota and one 16 KiB buffer's piece,
/// where the unlinked pair holds a quota on each side (more than 1.5 quotas here). And the
/// receive the link stopped starts again as B's sends go out: all 2 MiB arrive, in order.
#[test]
fn linked_sockets_hold_one_quota_per_direction() {
    let quota = 64 * 1024;
    let Some((unlinked, limited)) = forward_to_a_stalled_reader(false, quota) else {
        return;
    };
    let (linked, _) = forward_to_a_stalled_reader(true, quota).unwrap();
    eprintln!("held at the peak: linked {linked} bytes, unlinked {unlinked} (quota {quota})");
    if !limited {
        // Without the kernel's byte limit on multishot receives (before 6.17) the first burst
        // lands before the driver's cancel does, as large as the socket's receive queue then
        // (84 KB on 6.1 under QEMU, but unbounded by the quota): the bounds below are for
        // kernels with the limit. Every byte still had to arrive, in order.
        eprintln!("SKIPPED the bounds: no byte limit on multishot receives here");
        return;
    }
    assert!(
        linked <= quota + 16 * 1024,
        "linked: {linked} bytes held against a {quota}-byte quota"
    );
    assert!(
        unlinked > quota * 3 / 2,
        "unlinked: only {unlinked} bytes held (the stall did not fill both sides)"
    );
}

/// `link` refuses a socket linked already and a socket linked to itself; closing one end
/// ends the link (the other can be linked again).
#[test]
fn link_refusals_and_unlink_on_close() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let (a, _pa) = common::tcp_pair();
    let (b, _pb) = common::tcp_pair();
    let (c, _pc) = common::tcp_pair();
    let (sa, sb, sc) = (d.socket(a), d.socket(b), d.socket(c));
    assert!(matches!(
        d.link(sa, sa),
        Err(Error::InvalidState { op: "link", .. })
    ));
    d.link(sa, sb).unwrap();
    assert!(matches!(
        d.link(sa, sc),
        Err(Error::InvalidState { op: "link", .. })
    ));
    assert!(matches!(
        d.link(sc, sb),
        Err(Error::InvalidState { op: "link", .. })
    ));
    d.close(sb).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.stats().sockets > 2 {
        assert!(Instant::now() < deadline);
        d.run_once(Some(Duration::from_millis(10))).unwrap();
        while d.next_event().is_some() {}
    }
    d.link(sa, sc).unwrap();
    assert!(matches!(d.link(sb, sc), Err(Error::NotOpen { .. })));
}
