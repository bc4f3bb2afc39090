//! The driver on datagram sockets (UDP on loopback, on the running kernel): a datagram pool's
//! recvmsg multishot, `read_datagram`, sends that keep datagram boundaries, quotas, and the
//! configurations it refuses.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use bufring::driver::{Driver, DriverBuilder, PoolId, Received, SocketId};
use bufring::{Error, Incremental, Pool, RecvMsg};

/// A driver, or `None` (and a message) where the kernel refuses io_uring.
fn driver(b: DriverBuilder) -> Option<Driver> {
    common::uring(8)?;
    Some(b.build().expect("driver"))
}

/// A classic pool of `count` 2 KiB buffers for datagrams with v4/v6 sources and no control
/// messages (classic: incremental rings need `min_left`, which 6.18 lacks).
fn datagram_pool(d: &mut Driver, count: u16) -> PoolId {
    let msg = RecvMsg::new(RecvMsg::INET6_NAME_LEN, 0).unwrap();
    d.add_datagram_pool(
        Pool::builder(1)
            .count(count as usize)
            .buf_len(2048)
            .incremental(Incremental::Off),
        msg,
    )
    .expect("datagram pool")
}

/// A UDP socket on loopback handed to the driver, receiving from `pool`, and its address.
fn udp_socket(d: &mut Driver, pool: PoolId) -> (SocketId, SocketAddr) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let s = d.socket(OwnedFd::from(sock));
    d.recv(s, pool).unwrap();
    (s, addr)
}

/// Datagram `i`: its number, its length and a pattern, 8..=1400 bytes.
fn datagram(i: u32) -> Vec<u8> {
    let len = 8 + (i as usize * 211) % 1393;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&i.to_le_bytes());
    v.extend_from_slice(&(len as u32).to_le_bytes());
    v.extend((8..len).map(|j| (i as usize * 7 + j) as u8));
    v
}

/// Steps the driver, handing `on` each datagram that arrives on `s`, until `on` says it is
/// done (at most `limit`).
fn take_datagrams(
    d: &mut Driver,
    s: SocketId,
    limit: Duration,
    mut on: impl FnMut(&mut Driver, bufring::Datagram) -> bool,
) {
    let deadline = Instant::now() + limit;
    let mut done = false;
    while !done {
        assert!(
            Instant::now() < deadline,
            "not done in {limit:?}: {:?}\n{}",
            d.stats(),
            d.dump()
        );
        d.run_once(Some(Duration::from_millis(20))).unwrap();
        while d.next_event().is_some() {}
        while let Some(r) = d.read_datagram(s).unwrap() {
            match r {
                Received::Data(dg) => done |= on(d, dg),
                Received::End => panic!("a UDP socket's receive ended"),
                Received::Error(e) => panic!("receive failed: {e}"),
            }
        }
    }
}

/// Every datagram arrives whole, with its source, and the echo the driver sends from the
/// received chunk (no copy) comes back as the same datagram: 32 at a time (so loopback's
/// socket buffers cannot drop any), 2,000 in all, lengths from 8 to 1,400 bytes. Sends queued
/// together stay separate datagrams (one sendmsg would merge them).
#[test]
fn udp_echo_keeps_every_datagram_whole() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let pool = datagram_pool(&mut d, 64);
    let (s, server) = udp_socket(&mut d, pool);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(server).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let me = client.local_addr().unwrap();
    // The driver's socket replies with `send`: connect it to the client.
    let fd = d.fd(s).unwrap().try_clone_to_owned().unwrap();
    UdpSocket::from(fd).connect(me).unwrap();

    const TOTAL: u32 = 2000;
    const WINDOW: u32 = 32;
    let mut buf = vec![0u8; 2048];
    let mut next = 0;
    while next < TOTAL {
        let end = (next + WINDOW).min(TOTAL);
        for i in next..end {
            client.send(&datagram(i)).unwrap();
        }
        let mut got = 0;
        take_datagrams(&mut d, s, Duration::from_secs(10), |d, dg| {
            assert_eq!(dg.source(), Some(me));
            assert!(!dg.is_truncated());
            assert_eq!(
                &dg.payload()[..],
                &datagram(next + got)[..],
                "datagram {}",
                next + got
            );
            got += 1;
            // Echoed straight from its pool buffer.
            d.send(s, dg.into_payload()).unwrap();
            got == end - next
        });
        flush(&mut d, s);
        for i in next..end {
            let n = recv_retrying(&client, &mut buf);
            assert_eq!(&buf[..n], &datagram(i)[..], "echo of datagram {i}");
        }
        next = end;
    }
    let st = d.stats();
    assert_eq!(st.rejected, 0);
    assert!(st.receives_armed >= 1);
}

/// Steps the driver until everything queued to send on `s` has gone.
fn flush(d: &mut Driver, s: SocketId) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.unsent(s).unwrap() > 0 {
        assert!(Instant::now() < deadline, "sends stuck: {}", d.dump());
        d.run_once(Some(Duration::from_millis(10))).unwrap();
        while d.next_event().is_some() {}
    }
}

/// `recv` on a blocking socket with a timeout, again after EINTR: this thread's ring has
/// requests in flight, and the kernel's task work for them interrupts a receive that has a
/// timeout (one without a timeout restarts by itself).
fn recv_retrying(sock: &UdpSocket, buf: &mut [u8]) -> usize {
    loop {
        match sock.recv(buf) {
            Ok(n) => return n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// A receiver that does not read holds at most its quota (plus what one wake-up brings): the
/// receive stops there, the rest waits in the kernel's socket buffer (or is dropped by it, as
/// UDP may), and reading starts the receive again.
#[test]
fn a_datagram_socket_that_is_not_read_stops_at_its_quota() {
    let quota = 16 * 1024;
    let Some(mut d) = driver(Driver::builder().recv_quota(quota, quota)) else {
        return;
    };
    let pool = datagram_pool(&mut d, 256);
    let (s, server) = udp_socket(&mut d, pool);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(server).unwrap();
    for i in 0..200 {
        client.send(&datagram(i)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        d.run_once(Some(Duration::from_millis(20))).unwrap();
        while d.next_event().is_some() {}
    }
    let queued = d.queued(s).unwrap();
    // One wake-up of the multishot may bring the socket buffer's datagrams at once before the
    // cancel lands: bound it by a socket buffer's worth.
    assert!(queued >= quota, "only {queued} bytes queued");
    assert!(
        queued <= quota + 256 * 1024,
        "{queued} bytes queued against a {quota}-byte quota"
    );
    assert!(d.stats().quota_pauses >= 1, "{:?}", d.stats());
    // Reading what is queued starts the receive again: the backlog the kernel kept comes in
    // (whole, in order; UDP may have dropped some while the socket buffer was full), and then
    // datagrams sent one at a time all arrive.
    let mut seen: Vec<u32> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(300) {
        assert!(Instant::now() < deadline, "{:?}", d.stats());
        d.run_once(Some(Duration::from_millis(10))).unwrap();
        while d.next_event().is_some() {}
        while let Some(Received::Data(dg)) = d.read_datagram(s).unwrap() {
            let i = u32::from_le_bytes(dg.payload()[..4].try_into().unwrap());
            assert_eq!(&dg.payload()[..], &datagram(i)[..]);
            assert!(seen.last().is_none_or(|&l| l < i), "{i} after {seen:?}");
            seen.push(i);
            quiet_since = Instant::now();
        }
    }
    assert!(seen.len() as u64 > 0, "nothing was read");
    for late in 1000..1050 {
        client.send(&datagram(late)).unwrap();
        take_datagrams(&mut d, s, Duration::from_secs(10), |_, dg| {
            assert_eq!(&dg.payload()[..], &datagram(late)[..]);
            true
        });
    }
}

/// What a datagram pool refuses, each with a typed error: an incremental pool without
/// `min_left` (a short tail would fail the multishot with EFAULT), buffers too short for the
/// header, a pool built for bundles; and `read_datagram` on a stream socket.
#[test]
fn datagram_pools_refuse_what_cannot_work() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let msg = || RecvMsg::new(RecvMsg::INET6_NAME_LEN, 64).unwrap();
    let incremental = Pool::builder(1)
        .count(8)
        .buf_len(4096)
        .incremental(Incremental::Auto);
    match d.add_datagram_pool(incremental, msg()) {
        Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "min_left"),
        // A kernel without incremental consumption made the pool classic: that one serves.
        Ok(p) => assert!(!d.pool(p).unwrap().is_incremental()),
        Err(e) => panic!("unexpected error: {e}"),
    }
    let short = Pool::builder(2)
        .count(8)
        .buf_len(64)
        .incremental(Incremental::Off);
    assert!(matches!(
        d.add_datagram_pool(short, msg()),
        Err(Error::InvalidConfig {
            field: "buf_len",
            ..
        })
    ));
    let bundles = Pool::builder(3)
        .count(8)
        .buf_len(4096)
        .incremental(Incremental::Off)
        .bundles(true);
    match d.add_datagram_pool(bundles, msg()) {
        Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "bundles"),
        Err(Error::Unsupported { .. }) => {}
        other => panic!("a bundle pool for datagrams: {other:?}"),
    }
    // A stream socket on a stream pool.
    let stream_pool = d.add_pool(Pool::builder(4).count(8).buf_len(4096)).unwrap();
    let (a, _b) = common::tcp_pair();
    let s = d.socket(OwnedFd::from(a));
    d.recv(s, stream_pool).unwrap();
    assert!(matches!(
        d.read_datagram(s),
        Err(Error::InvalidState {
            op: "read_datagram",
            ..
        })
    ));
}

/// A connected UDP socket whose peer's port is closed: the kernel's ICMP error (ECONNREFUSED)
/// ends the receive and comes out of `read_datagram` as the error, once, then nothing.
#[test]
fn a_refused_datagram_surfaces_as_the_error() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let pool = datagram_pool(&mut d, 8);
    let (s, _) = udp_socket(&mut d, pool);
    // A port nobody listens on any more.
    let closed = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let fd = d.fd(s).unwrap().try_clone_to_owned().unwrap();
    UdpSocket::from(fd).connect(closed).unwrap();
    d.send_bytes(s, b"anyone?".to_vec()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let error = loop {
        assert!(Instant::now() < deadline, "no error: {}", d.dump());
        d.run_once(Some(Duration::from_millis(20))).unwrap();
        while d.next_event().is_some() {}
        match d.read_datagram(s).unwrap() {
            Some(Received::Error(e)) => break e,
            Some(Received::Data(dg)) => panic!("a datagram from nowhere: {dg:?}"),
            Some(Received::End) => panic!("an end instead of the error"),
            None => {}
        }
    };
    assert_eq!(error.raw_os_error(), Some(libc::ECONNREFUSED), "{error}");
    assert!(d.read_datagram(s).unwrap().is_none());
}

/// An unconnected UDP server answers several clients with `send_to`, straight from the
/// received chunks: each client gets its own datagrams back, whole and in order. A datagram
/// too long for UDP fails alone (EMSGSIZE, a `SendFailed` event); the next one still goes.
#[test]
fn an_unconnected_server_replies_with_send_to() {
    let Some(mut d) = driver(Driver::builder()) else {
        return;
    };
    let pool = datagram_pool(&mut d, 64);
    let (s, server) = udp_socket(&mut d, pool);
    let clients: Vec<UdpSocket> = (0..4)
        .map(|_| {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c
        })
        .collect();
    let mut buf = vec![0u8; 2048];
    for round in 0..50u32 {
        for (k, c) in clients.iter().enumerate() {
            c.send_to(&datagram(round * 4 + k as u32), server).unwrap();
        }
        let mut got = 0;
        take_datagrams(&mut d, s, Duration::from_secs(10), |d, dg| {
            let from = dg.source().expect("a source address");
            d.send_to(s, dg.into_payload(), from).unwrap();
            got += 1;
            got == clients.len()
        });
        flush(&mut d, s);
        for (k, c) in clients.iter().enumerate() {
            let n = recv_retrying(c, &mut buf);
            assert_eq!(&buf[..n], &datagram(round * 4 + k as u32)[..]);
        }
    }
    // Too long for a UDP datagram, then a good one: the first fails alone.
    let me = clients[0].local_addr().unwrap();
    d.send_to(s, bufring::Chunk::try_from(vec![0u8; 70_000]).unwrap(), me)
        .unwrap();
    d.send_to(
        s,
        bufring::Chunk::try_from(b"still here".to_vec()).unwrap(),
        me,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut failed = None;
    while d.unsent(s).unwrap() > 0 || failed.is_none() {
        assert!(Instant::now() < deadline, "{}", d.dump());
        d.run_once(Some(Duration::from_millis(10))).unwrap();
        while let Some(ev) = d.next_event() {
            if let bufring::driver::Event::SendFailed { error, .. } = ev {
                failed = Some(error);
            }
        }
    }
    assert_eq!(failed.unwrap().raw_os_error(), Some(libc::EMSGSIZE));
    let n = recv_retrying(&clients[0], &mut buf);
    assert_eq!(&buf[..n], b"still here");
    // `send_to` on a stream socket is refused.
    let stream_pool = d.add_pool(Pool::builder(9).count(4).buf_len(4096)).unwrap();
    let (a, _b) = common::tcp_pair();
    let t = d.socket(OwnedFd::from(a));
    d.recv(t, stream_pool).unwrap();
    assert!(matches!(
        d.send_to(t, bufring::Chunk::try_from(vec![1]).unwrap(), me),
        Err(Error::InvalidState { op: "send_to", .. })
    ));
}

/// A datagram socket nobody reads, on a pool so small that it runs dry at once: the spill that
/// gives the pool its buffers back must not start the receive of a socket over its quota
/// again (it did: the receive queue then grew on the heap, spill after spill, without bound;
/// bufring-tokio's flood test saw 1.3 MB against a 16 KiB quota).
#[test]
fn a_dry_pool_does_not_restart_a_receive_over_its_quota() {
    let quota = 16 * 1024;
    let Some(mut d) = driver(Driver::builder().recv_quota(quota, quota)) else {
        return;
    };
    let pool = datagram_pool(&mut d, 4);
    let (s, server) = udp_socket(&mut d, pool);
    let blaster = std::thread::spawn(move || {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sent = 0;
        for i in 0..20_000 {
            if c.send_to(&datagram(i), server).is_ok() {
                sent += datagram(i).len();
            }
        }
        sent
    });
    let deadline = Instant::now() + Duration::from_millis(800);
    let mut peak = 0;
    while Instant::now() < deadline {
        d.run_once(Some(Duration::from_millis(5))).unwrap();
        while d.next_event().is_some() {}
        peak = peak.max(d.queued(s).unwrap());
    }
    let sent = blaster.join().unwrap();
    // The quota, plus what the multishot takes before its cancel lands: it can fill only the
    // buffers posted, 4 of 2 KiB (twice, if a spill posts them again meanwhile). Before the
    // fix: 322,588 bytes after 800 ms, and growing.
    let bound = quota + 2 * 4 * 2048;
    assert!(
        peak <= bound,
        "{peak} bytes queued (bound {bound}, {sent} sent): {:?}",
        d.stats()
    );
    assert!(
        sent > 4 * bound,
        "the flood ({sent} bytes) was too small to tell"
    );
}
