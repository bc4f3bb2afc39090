//! A tokio UDP echo server on io_uring provided buffers: each datagram arrives whole in a
//! buffer of the `Uring`'s datagram pool, and its payload goes back to its source from the
//! same memory (no copy).
//!
//! Self-checking and bounded: it starts the server on loopback, runs 16 clients that each
//! send 500 datagrams (a few at a time, so loopback drops none) and check every echo, prints
//! what it saw and exits (with an error if anything was wrong or took longer than 30 seconds).
//!
//! `cargo run -p bufring-tokio --example udp_echo`

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bufring_tokio::{DatagramSocket, Uring};
use tokio::net::UdpSocket;

const CLIENTS: u64 = 16;
const DATAGRAMS: u64 = 500;
/// Datagrams a client has in flight at once.
const WINDOW: u64 = 4;

/// Datagram `i` of client `seed`: 1 to 1,400 bytes.
fn datagram(seed: u64, i: u64) -> Vec<u8> {
    let len = 1 + ((seed * 131 + i * 977) % 1400) as usize;
    (0..len as u64)
        .map(|k| ((k * 31 + seed * 7 + i) % 251) as u8)
        .collect()
}

/// Echoes `total` datagrams, each to where it came from; returns the bytes echoed.
async fn serve(mut sock: DatagramSocket, total: u64) -> io::Result<u64> {
    let mut bytes = 0;
    for _ in 0..total {
        let d = match sock.recv().await {
            Some(d) => d?,
            None => return Err(io::Error::other("the socket ended")),
        };
        let from = d
            .source()
            .ok_or_else(|| io::Error::other("no source address"))?;
        bytes += d.payload().len() as u64;
        sock.send_to(d.into_payload(), from).await?; // from the pool buffer it arrived in
    }
    sock.flush().await?;
    Ok(bytes)
}

/// Sends its datagrams `WINDOW` at a time and checks each echo, in order.
async fn client(server: SocketAddr, seed: u64) -> io::Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    sock.connect(server).await?;
    let mut buf = vec![0u8; 2048];
    let mut i = 0;
    while i < DATAGRAMS {
        let end = (i + WINDOW).min(DATAGRAMS);
        for k in i..end {
            sock.send(&datagram(seed, k)).await?;
        }
        for k in i..end {
            let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
                .await
                .map_err(|_| io::Error::other(format!("client {seed}: no echo of {k}")))??;
            if buf[..n] != datagram(seed, k)[..] {
                return Err(io::Error::other(format!("client {seed}: echo {k} differs")));
            }
        }
        i = end;
    }
    Ok(())
}

async fn run() -> io::Result<()> {
    let uring = Uring::new()?;
    let udp = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = udp.local_addr()?;
    let start = Instant::now();
    let server = tokio::spawn(serve(uring.datagram_socket(udp)?, CLIENTS * DATAGRAMS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|seed| tokio::spawn(client(addr, seed)))
        .collect();
    for c in clients {
        c.await.map_err(io::Error::other)??;
    }
    let echoed = server.await.map_err(io::Error::other)??;
    let stats = uring.stats().await?;
    let pool = stats
        .datagram_pool
        .ok_or_else(|| io::Error::other("no datagram pool"))?;
    println!(
        "echoed {} datagrams ({echoed} bytes) from {CLIENTS} clients in {:?}, all checked",
        CLIENTS * DATAGRAMS,
        start.elapsed()
    );
    println!(
        "datagram pool: {} buffers, at most {} held by the application at once; {} completions",
        pool.buffers, pool.peak_with_app, pool.completions
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> io::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), run())
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "not done in 30 s"))?
}
