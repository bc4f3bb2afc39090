//! recvmsg multishot on real UDP sockets on loopback: every datagram checked byte by byte,
//! sources (IPv4 and IPv6) and control messages, rings that wrap, exhaustion and re-arm,
//! truncation, incremental pools with `min_left`, and forged buffers.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bufring::Cqe;
use bufring::{
    BadDatagram, Completion, Datagram, Error, Feature, Incremental, Pool, Probe, RecvMsg,
};
use common::Pattern;
#[allow(unused_imports)]
use common::{one, Reap};
use io_uring::IoUring;

fn setsockopt(fd: RawFd, level: i32, name: i32, value: i32) {
    // SAFETY: `value` is a valid int for the duration of the call; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    assert_eq!(
        r,
        0,
        "setsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
}

/// A receiver with a large buffer, drop counting (SO_RXQ_OVFL), packet info and timestamps;
/// and a sender on the same loopback address.
fn udp_pair(addr: &str) -> Option<(UdpSocket, UdpSocket)> {
    let rx = match UdpSocket::bind(addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIPPED: cannot bind {addr} ({e})");
            return None;
        }
    };
    let tx = UdpSocket::bind(addr).unwrap();
    let fd = rx.as_raw_fd();
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 1 << 20);
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1);
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMP, 1);
    if addr.starts_with('[') {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1);
    } else {
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1);
    }
    tx.connect(rx.local_addr().unwrap()).unwrap();
    Some((rx, tx))
}

/// Room for IP(V6)_PKTINFO, SO_TIMESTAMP and SO_RXQ_OVFL.
const CONTROL_LEN: u32 = 32 + 32 + 24;

/// Datagram `seq`: its number, then pattern bytes seeded by it.
fn datagram(seq: u32, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len.max(4)];
    v[..4].copy_from_slice(&seq.to_be_bytes());
    Pattern::new(u64::from(seq) + 1).fill(&mut v[4..]);
    v
}

fn size_of_datagram(seq: u32, max: usize) -> usize {
    4 + (Pattern::new(u64::from(seq) ^ 0xabcd).next_u64() as usize % (max - 3))
}

/// Checks payload, source, control messages and that nothing was dropped.
fn check(d: &Datagram, seq: u32, max: usize, from: SocketAddr) {
    assert!(!d.is_truncated(), "datagram {seq} truncated: {d:?}");
    assert_eq!(
        &d.payload()[..],
        &datagram(seq, size_of_datagram(seq, max))[..],
        "datagram {seq} differs"
    );
    assert_eq!(d.source(), Some(from));
    assert!(!d.is_control_truncated());
    assert_eq!(d.dropped(), None, "the socket dropped datagrams");
    let mut pktinfo = false;
    let mut stamp = false;
    for m in d.control() {
        match (m.level, m.ty) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                // struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr; }
                assert_eq!(m.data.len(), 12);
                assert_eq!(&m.data[8..12], &[127, 0, 0, 1]);
                pktinfo = true;
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                // struct in6_pktinfo { in6_addr ipi6_addr; int ipi6_ifindex; }
                assert_eq!(m.data.len(), 20);
                assert_eq!(&m.data[..16], &std::net::Ipv6Addr::LOCALHOST.octets());
                pktinfo = true;
            }
            (libc::SOL_SOCKET, libc::SO_TIMESTAMP) => {
                // struct timeval: seconds first.
                let secs = i64::from_ne_bytes(m.data[..8].try_into().unwrap());
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                assert!(
                    now.abs_diff(secs as u64) < 60,
                    "timestamp {secs} vs now {now}"
                );
                stamp = true;
            }
            other => panic!("unexpected control message {other:?}"),
        }
    }
    assert!(pktinfo && stamp, "control messages missing");
}

/// Keeps one recvmsg multishot armed on a socket and hands out its datagrams.
struct Receiver {
    fd: RawFd,
    armed: bool,
    enobufs: u32,
    rearms: u32,
}

impl Receiver {
    fn new(sock: &UdpSocket) -> Self {
        Receiver {
            fd: sock.as_raw_fd(),
            armed: false,
            enobufs: 0,
            rearms: 0,
        }
    }

    /// Receives `n` datagrams (bounded in time), re-arming after ENOBUFS or a multishot end.
    fn recv(
        &mut self,
        ring: &mut IoUring,
        pool: &mut Pool,
        msg: &RecvMsg,
        n: usize,
        mut on: impl FnMut(Datagram),
    ) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = 0;
        while got < n {
            assert!(Instant::now() < deadline, "{got} of {n} datagrams in 20 s");
            if !self.armed {
                common::push(ring, &msg.multishot(pool, self.fd).unwrap());
                self.armed = true;
                self.rearms += 1;
            }
            for (_, res, flags) in common::reap(ring, Duration::from_millis(200)) {
                match pool
                    .reap(Cqe::new(res, flags))
                    .expect("completion rejected")
                {
                    Completion::Data { chunks, more } => {
                        let chunk = one(chunks);
                        self.armed &= more;
                        on(msg.parse(chunk).expect("kernel layout rejected"));
                        got += 1;
                    }
                    Completion::NoBuffers => {
                        self.armed = false;
                        self.enobufs += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            pool.publish();
        }
    }
}

/// Sends `total` datagrams in paced batches (a batch never overflows the receive buffer) and
/// checks each one. Returns the (payload offset, payload length, last) of every datagram.
fn traffic(
    ring: &mut IoUring,
    pool: &mut Pool,
    msg: &RecvMsg,
    rx: &UdpSocket,
    tx: &UdpSocket,
    total: u32,
    max: usize,
) -> (Receiver, Vec<(u32, usize, bool)>) {
    let mut r = Receiver::new(rx);
    let from = tx.local_addr().unwrap();
    let mut seen = Vec::new();
    let mut next = 0u32;
    while next < total {
        let batch = (total - next).min(32);
        for seq in next..next + batch {
            tx.send(&datagram(seq, size_of_datagram(seq, max))).unwrap();
        }
        let mut expect = next;
        r.recv(ring, pool, msg, batch as usize, |d| {
            check(&d, expect, max, from);
            expect += 1;
            let p = d.payload();
            seen.push((p.offset(), p.len(), p.is_last()));
        });
        next += batch;
    }
    (r, seen)
}

#[test]
fn classic_pool_checks_every_datagram_and_wraps_the_ring() {
    let mut ring = require_uring!();
    let Some((rx, tx)) = udp_pair("127.0.0.1:0") else {
        return;
    };
    let mut pool = Pool::builder(3)
        .count(8)
        .buf_len(2048)
        .build(&ring)
        .unwrap();
    let msg = RecvMsg::new(RecvMsg::INET6_NAME_LEN, CONTROL_LEN).unwrap();
    let (r, seen) = traffic(&mut ring, &mut pool, &msg, &rx, &tx, 2000, 1400);
    assert_eq!(seen.len(), 2000);
    assert!(seen
        .iter()
        .all(|&(off, _, last)| off == msg.header_len() && last));
    let st = pool.stats();
    assert!(st.reposted >= 2000 - 8, "ring did not wrap: {st:?}");
    eprintln!(
        "classic: {} re-arms, {} ENOBUFS, {st:?}",
        r.rearms, r.enobufs
    );
}

fn min_left_supported() -> bool {
    let p = Probe::run().unwrap();
    if !p.min_left {
        eprintln!("kernel {} lacks min_left", p.kernel);
    }
    p.min_left
}

#[test]
fn incremental_pool_with_min_left_packs_datagrams_and_retires_small_tails() {
    let mut ring = require_uring!();
    let Some((rx, tx)) = udp_pair("127.0.0.1:0") else {
        return;
    };
    let msg = RecvMsg::new(RecvMsg::INET6_NAME_LEN, CONTROL_LEN).unwrap();
    let max = 1400;
    let min_left = msg.min_left_for(max as u32);
    let built = Pool::builder(4)
        .count(4)
        .buf_len(16 * 1024)
        .incremental(Incremental::Kernel)
        .min_left(min_left)
        .build(&ring);
    let mut pool = match built {
        Ok(p) => p,
        Err(Error::Unsupported { feature }) => {
            // The probe must agree: the combination is refused, not left to fail with EFAULT.
            assert!(matches!(feature, Feature::MinLeft | Feature::Incremental));
            assert!(!min_left_supported() || feature == Feature::Incremental);
            eprintln!("SKIPPED: {feature} unsupported here");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let (r, seen) = traffic(&mut ring, &mut pool, &msg, &rx, &tx, 1500, max);
    assert_eq!(seen.len(), 1500);
    let buf_len = pool.buf_len() as usize;
    let mut packed = 0;
    for &(off, len, last) in &seen {
        let tail = buf_len - (off as usize + len);
        if last {
            // Retired: the rest could not hold another header and full-size datagram.
            assert!(tail < min_left as usize, "retired with {tail} bytes left");
        } else {
            assert!(
                tail >= min_left as usize,
                "kept with only {tail} bytes left"
            );
        }
        if off > msg.header_len() {
            packed += 1;
        }
    }
    assert!(packed > 1000, "only {packed} datagrams shared a buffer");
    let st = pool.stats();
    assert!(st.buffers_retired > 8, "ring did not wrap: {st:?}");
    eprintln!(
        "incremental: {packed} packed, {} re-arms, {} ENOBUFS, utilization {:.2}, {st:?}",
        r.rearms,
        r.enobufs,
        st.utilization()
    );
}

#[test]
fn incremental_pool_without_min_left_is_refused() {
    let ring = require_uring!();
    let msg = RecvMsg::new(RecvMsg::INET6_NAME_LEN, 0).unwrap();
    let pool = match Pool::builder(5)
        .count(2)
        .buf_len(4096)
        .incremental(Incremental::Kernel)
        .build(&ring)
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIPPED: no incremental pools here ({e})");
            return;
        }
    };
    let e = msg.multishot(&pool, 0).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "min_left",
                ..
            }
        ),
        "{e}"
    );
    let small = Pool::builder(6).count(1).buf_len(44).build(&ring).unwrap();
    let e = msg.multishot(&small, 0).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "buf_len",
                ..
            }
        ),
        "{e}"
    );
}

/// What bufring refuses to let users run into: on an incremental pool without `min_left`, a
/// buffer tail shorter than the recvmsg header ends the multishot with EFAULT.
#[test]
fn kernel_fails_a_multishot_on_a_small_tail_without_min_left() {
    let mut ring = require_uring!();
    let Some((rx, tx)) = udp_pair("127.0.0.1:0") else {
        return;
    };
    let mut pool = match Pool::builder(7)
        .count(2)
        .buf_len(1024)
        .incremental(Incremental::Kernel)
        .build(&ring)
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIPPED: no incremental pools here ({e})");
            return;
        }
    };
    // The request RecvMsg::multishot refuses to build: name area only, 44-byte header.
    let msg = RecvMsg::new(RecvMsg::INET6_NAME_LEN, 0).unwrap();
    // SAFETY: msghdr is plain old data; all-zero is valid.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_namelen = msg.name_len();
    let sqe =
        io_uring::opcode::RecvMsgMulti::new(io_uring::types::Fd(rx.as_raw_fd()), &hdr, pool.bgid())
            .build();
    common::push(&mut ring, &sqe);
    // Four datagrams of 207 bytes take 4 * 251 = 1004 bytes: 20 are left, fewer than 44.
    for seq in 0..5u32 {
        tx.send(&datagram(seq, 207)).unwrap();
    }
    let mut results = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while results.len() < 5 && Instant::now() < deadline {
        for (_, res, flags) in common::reap(&mut ring, Duration::from_millis(100)) {
            let more = Cqe::new(res, flags).more();
            match pool.reap(Cqe::new(res, flags)).unwrap() {
                Completion::Data { chunks, .. } => {
                    let chunk = one(chunks);
                    let d = msg.parse(chunk).unwrap();
                    assert_eq!(&d.payload()[..], &datagram(results.len() as u32, 207)[..]);
                    results.push(Ok(more));
                }
                Completion::Failed(e) => results.push(Err((e.raw_os_error(), more))),
                other => panic!("unexpected {other:?}"),
            }
        }
        pool.publish();
    }
    assert_eq!(
        results,
        vec![
            Ok(true),
            Ok(true),
            Ok(true),
            Ok(true),
            Err((Some(libc::EFAULT), false))
        ],
        "the kernel's answer changed: update docs/kernel-facts.md and RecvMsg::check_pool"
    );
    // The fifth datagram was not lost: it waits in the socket.
    let mut buf = [0u8; 512];
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &datagram(4, 207)[..]);
}

#[test]
fn exhaustion_then_rearm_loses_nothing() {
    let mut ring = require_uring!();
    let Some((rx, tx)) = udp_pair("127.0.0.1:0") else {
        return;
    };
    let mut pool = Pool::builder(8)
        .count(4)
        .buf_len(2048)
        .build(&ring)
        .unwrap();
    let msg = RecvMsg::new(RecvMsg::INET6_NAME_LEN, CONTROL_LEN).unwrap();
    let from = tx.local_addr().unwrap();
    let total = 30u32;
    for seq in 0..total {
        tx.send(&datagram(seq, size_of_datagram(seq, 1000)))
            .unwrap();
    }
    common::push(&mut ring, &msg.multishot(&pool, rx.as_raw_fd()).unwrap());
    let mut next = 0u32;
    let mut held = Vec::new();
    let mut enobufs = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while next < total {
        assert!(Instant::now() < deadline, "stuck at datagram {next}");
        for (_, res, flags) in common::reap(&mut ring, Duration::from_millis(200)) {
            match pool.reap(Cqe::new(res, flags)).unwrap() {
                Completion::Data { chunks, more } => {
                    let chunk = one(chunks);
                    let d = msg.parse(chunk).unwrap();
                    check(&d, next, 1000, from);
                    next += 1;
                    // Hold every chunk: the ring runs dry after four datagrams.
                    held.push(d);
                    assert!(more || next == total, "multishot ended without ENOBUFS");
                }
                Completion::NoBuffers => {
                    enobufs += 1;
                    assert_eq!(held.len(), 4, "ENOBUFS with buffers left");
                    held.clear();
                    assert_eq!(pool.publish(), 4);
                    common::push(&mut ring, &msg.multishot(&pool, rx.as_raw_fd()).unwrap());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(enobufs >= 7, "only {enobufs} ENOBUFS");
    assert_eq!(pool.stats().enobufs, enobufs);
}

#[test]
fn truncated_payload_and_control_are_visible() {
    let mut ring = require_uring!();
    let Some((rx, tx)) = udp_pair("127.0.0.1:0") else {
        return;
    };
    let mut pool = Pool::builder(9).count(4).buf_len(256).build(&ring).unwrap();
    // 16 bytes of control area: room for a cmsghdr, not for any of the messages enabled.
    let msg = RecvMsg::new(RecvMsg::INET_NAME_LEN, 16).unwrap();
    common::push(&mut ring, &msg.multishot(&pool, rx.as_raw_fd()).unwrap());
    let big = datagram(1, 1000);
    tx.send(&big).unwrap();
    let cqes = common::reap(&mut ring, Duration::from_secs(5));
    assert_eq!(cqes.len(), 1);
    let (_, res, flags) = cqes[0];
    assert_eq!(res as u32, pool.buf_len(), "the buffer should be full");
    let chunk = pool.reap_chunk(Cqe::new(res, flags));
    let d = msg.parse(chunk).unwrap();
    assert!(d.is_truncated());
    assert_eq!(
        d.msg_flags() & libc::MSG_TRUNC as u32,
        libc::MSG_TRUNC as u32
    );
    assert_eq!(d.payload_len(), 1000, "MSG_TRUNC reports the full length");
    assert_eq!(d.payload().len(), 256 - 16 - 16 - 16);
    assert_eq!(&d.payload()[..], &big[..d.payload().len()]);
    assert!(d.is_control_truncated());
    // The kernel cuts the message that did not fit down to what fits (here its header) and
    // sets cmsg_len to that: it is yielded with its data cut short.
    let msgs: Vec<_> = d.control().collect();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(msgs[0].data.is_empty());
    assert_eq!(d.dropped(), None);
    assert_eq!(d.source(), Some(tx.local_addr().unwrap()));
    drop(d);
    pool.publish();

    // Without MSG_TRUNC in the receive flags the kernel reports only what it copied as
    // payloadlen; the MSG_TRUNC result flag still tells that the datagram was cut. (A socket
    // of its own: the first multishot is still armed on `rx`.)
    let (rx2, tx2) = udp_pair("127.0.0.1:0").unwrap();
    let plain = RecvMsg::new(RecvMsg::INET_NAME_LEN, 16)
        .unwrap()
        .msg_flags(0);
    common::push(&mut ring, &plain.multishot(&pool, rx2.as_raw_fd()).unwrap());
    tx2.send(&big).unwrap();
    let cqes = common::reap(&mut ring, Duration::from_secs(5));
    assert_eq!(cqes.len(), 1);
    let (_, res, flags) = cqes[0];
    let chunk = pool.reap_chunk(Cqe::new(res, flags));
    let d = plain.parse(chunk).unwrap();
    assert_eq!(d.payload().len(), 256 - 48);
    assert_eq!(d.payload_len(), 256 - 48, "payloadlen without MSG_TRUNC");
    assert!(d.is_truncated(), "MSG_TRUNC result flag");
    assert_eq!(d.source(), Some(tx2.local_addr().unwrap()));
}

#[test]
fn ipv6_sources_and_packet_info() {
    let mut ring = require_uring!();
    let Some((rx, tx)) = udp_pair("[::1]:0") else {
        return;
    };
    let mut pool = Pool::builder(10)
        .count(8)
        .buf_len(4096)
        .build(&ring)
        .unwrap();
    let msg = RecvMsg::new(RecvMsg::INET6_NAME_LEN, CONTROL_LEN).unwrap();
    let (_, seen) = traffic(&mut ring, &mut pool, &msg, &rx, &tx, 200, 3000);
    assert_eq!(seen.len(), 200);
    // An IPv4-only name area cannot hold an IPv6 source: raw bytes, no SocketAddr.
    let small = RecvMsg::new(RecvMsg::INET_NAME_LEN, CONTROL_LEN).unwrap();
    common::push(&mut ring, &small.multishot(&pool, rx.as_raw_fd()).unwrap());
    tx.send(b"v6").unwrap();
    let mut got = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.is_none() && Instant::now() < deadline {
        for (_, res, flags) in common::reap(&mut ring, Duration::from_millis(100)) {
            if let Completion::Data { chunks, .. } = pool.reap(Cqe::new(res, flags)).unwrap() {
                let chunk = one(chunks);
                got = Some(small.parse(chunk).unwrap());
            }
        }
    }
    let d = got.expect("no datagram");
    assert!(d.is_name_truncated());
    assert_eq!(d.name_len(), 28);
    assert_eq!(d.source(), None);
    assert_eq!(&d.payload()[..], b"v6");
}

/// Arbitrary bytes in a real pool buffer (read from a pipe) that claim to be a recvmsg
/// layout: every lie is a typed error.
#[test]
fn forged_buffers_are_typed_errors() {
    let mut ring = require_uring!();
    let mut pool = Pool::builder(11)
        .count(4)
        .buf_len(512)
        .build(&ring)
        .unwrap();
    let msg = RecvMsg::new(RecvMsg::INET_NAME_LEN, 32).unwrap();
    let header = |namelen: u32, controllen: u32, payloadlen: u32| -> Vec<u8> {
        let mut v: Vec<u8> = [namelen, controllen, payloadlen, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        v.resize(msg.header_len() as usize, 0);
        v
    };
    let mut cmsg_len_zero = header(16, 16, 0);
    let at = 16 + 16;
    cmsg_len_zero[at..at + 8].fill(0);
    let mut over = header(16, 16, 0);
    over[at..at + 8].copy_from_slice(&64usize.to_ne_bytes());
    type Expect = fn(&BadDatagram) -> bool;
    let cases: Vec<(Vec<u8>, Expect)> = vec![
        (vec![1, 2, 3], |e| {
            matches!(e, BadDatagram::Short { len: 3, .. })
        }),
        (header(16, 33, 0), |e| {
            matches!(e, BadDatagram::ControlTooLong { controllen: 33, .. })
        }),
        ([header(16, 0, 1), b"xyz".to_vec()].concat(), |e| {
            matches!(
                e,
                BadDatagram::PayloadTooLong {
                    received: 3,
                    payloadlen: 1
                }
            )
        }),
        (cmsg_len_zero, |e| {
            matches!(e, BadDatagram::BadControlMessage { cmsg_len: 0, .. })
        }),
        (over, |e| {
            matches!(e, BadDatagram::BadControlMessage { cmsg_len: 64, .. })
        }),
    ];
    let (pr, pw) = {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        (fds[0], fds[1])
    };
    for (bytes, expected) in cases {
        // SAFETY: `bytes` is valid for reads of its length; `pw` is our pipe's write end.
        let n = unsafe { libc::write(pw, bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(n as usize, bytes.len());
        common::push(&mut ring, &pool.read(pr, 0, u64::MAX));
        let cqes = common::reap(&mut ring, Duration::from_secs(5));
        let (_, res, flags) = cqes[0];
        let chunk = pool.reap_chunk(Cqe::new(res, flags));
        assert_eq!(&chunk[..], &bytes[..]);
        match msg.parse(chunk) {
            Err(Error::BadDatagram(e)) => assert!(expected(&e), "wrong error {e:?}"),
            other => panic!("forged layout accepted: {other:?}"),
        }
        pool.publish();
    }
    // SAFETY: both ends are ours and closed once.
    unsafe {
        libc::close(pr);
        libc::close(pw);
    }
}

#[test]
fn registered_file_targets_work_too() {
    let mut ring = require_uring!();
    let Some((rx, tx)) = udp_pair("127.0.0.1:0") else {
        return;
    };
    ring.submitter().register_files(&[rx.as_raw_fd()]).unwrap();
    let mut pool = Pool::builder(12)
        .count(8)
        .buf_len(2048)
        .build(&ring)
        .unwrap();
    let msg = RecvMsg::new(RecvMsg::INET6_NAME_LEN, CONTROL_LEN).unwrap();
    let sqe = msg.multishot(&pool, bufring::Target::Fixed(0)).unwrap();
    common::push(&mut ring, &sqe);
    let from = tx.local_addr().unwrap();
    for seq in 0..20 {
        tx.send(&datagram(seq, size_of_datagram(seq, 1400)))
            .unwrap();
    }
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while next < 8 && Instant::now() < deadline {
        for (_, res, flags) in common::reap(&mut ring, Duration::from_millis(100)) {
            match pool.reap(Cqe::new(res, flags)).unwrap() {
                Completion::Data { chunks, .. } => {
                    let chunk = one(chunks);
                    check(&msg.parse(chunk).unwrap(), next, 1400, from);
                    next += 1;
                }
                Completion::NoBuffers => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(next, 8, "one multishot fills the 8 buffers");
}
