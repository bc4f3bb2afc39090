//! Random traffic through the driver on the real kernel, against a model that is just the byte
//! streams: three sockets on one tiny pool (1 to 4 buffers of 1 KiB, classic or incremental),
//! random writes by the peers, reads that drop or hold what they read, drops of held chunks,
//! and steps of the driver. After every step every buffer is in exactly one place; at the end,
//! once the held chunks are dropped, every socket has received exactly what its peer wrote, in
//! order: nothing lost, nothing duplicated, nothing stuck (spills and wake-ups keep a tiny pool
//! moving).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bufring::driver::{Driver, Received, SocketId};
use bufring::{Chunk, Incremental, Pool};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Peer `i` writes `len` bytes.
    Write(usize, usize),
    /// Socket `i`'s queue is read; the chunks are dropped at once, or held.
    Read(usize, bool),
    /// The chunks held from socket `i` are dropped.
    DropHeld(usize),
    /// The driver runs once.
    Step,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 1..3000usize).prop_map(|(i, n)| Op::Write(i, n)),
        3 => (0..3usize, any::<bool>()).prop_map(|(i, h)| Op::Read(i, h)),
        1 => (0..3usize).prop_map(Op::DropHeld),
        3 => Just(Op::Step),
    ]
}

struct Conn {
    id: SocketId,
    peer: TcpStream,
    sent: Vec<u8>,
    got: Vec<u8>,
    held: Vec<Chunk>,
    next: u8,
}

fn read_all(d: &mut Driver, c: &mut Conn, hold: bool) {
    while let Some(item) = d.read(c.id).unwrap() {
        match item {
            Received::Data(chunk) => {
                c.got.extend_from_slice(&chunk);
                if hold {
                    c.held.push(chunk);
                }
            }
            other => panic!("the stream ended early: {other:?}"),
        }
    }
}

proptest! {
    #[test]
    fn random_traffic_on_a_tiny_pool_loses_nothing(
        ops in proptest::collection::vec(op(), 1..80),
        count in 1usize..5,
        incremental in any::<bool>(),
    ) {
        if common::uring(8).is_none() {
            return Ok(());
        }
        let mut d = Driver::builder()
            .window(Duration::from_millis(5))
            .spill_after(Duration::from_millis(1))
            .recv_quota(1024, 4096)
            .build()
            .unwrap();
        let mode = if incremental { Incremental::Auto } else { Incremental::Off };
        let pool = d.add_pool(Pool::builder(0).count(count).buf_len(1024).incremental(mode)).unwrap();
        let mut conns: Vec<Conn> = (0..3)
            .map(|_| {
                let (a, peer) = common::tcp_pair();
                let id = d.socket(a);
                d.recv(id, pool).unwrap();
                Conn { id, peer, sent: Vec::new(), got: Vec::new(), held: Vec::new(), next: 0 }
            })
            .collect();
        for op in ops {
            match op {
                Op::Write(i, n) => {
                    let c = &mut conns[i];
                    let bytes: Vec<u8> = (0..n).map(|k| c.next.wrapping_add(k as u8)).collect();
                    c.next = c.next.wrapping_add(n as u8);
                    c.peer.write_all(&bytes).unwrap();
                    c.sent.extend_from_slice(&bytes);
                }
                Op::Read(i, hold) => read_all(&mut d, &mut conns[i], hold),
                Op::DropHeld(i) => conns[i].held.clear(),
                Op::Step => d.run_once(Some(Duration::from_millis(2))).unwrap(),
            }
            let s = d.pool_stats()[0];
            prop_assert_eq!(s.in_kernel + s.with_app + s.parked, s.buffers, "{:?}", s);
            while d.next_event().is_some() {}
        }
        for c in &mut conns {
            c.held.clear();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while conns.iter().any(|c| c.got.len() < c.sent.len()) {
            prop_assert!(
                Instant::now() < deadline,
                "stuck: {:?} of {:?} bytes; {:?} {:?}",
                conns.iter().map(|c| c.got.len()).collect::<Vec<_>>(),
                conns.iter().map(|c| c.sent.len()).collect::<Vec<_>>(),
                d.stats(),
                d.pool_stats()
            );
            d.run_once(Some(Duration::from_millis(5))).unwrap();
            for c in &mut conns {
                read_all(&mut d, c, false);
            }
        }
        for c in &conns {
            prop_assert!(c.got == c.sent, "a stream differs from what its peer wrote");
        }
    }
}
