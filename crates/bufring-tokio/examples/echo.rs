//! A tokio echo server whose receives are io_uring provided-buffer receives: each connection's
//! bytes arrive as chunks of a shared pool and go back out from the same memory (no copy).
//!
//! Self-checking and bounded: it starts the server on loopback, runs 16 tokio clients that
//! upload 1 MiB each while checking the echo, prints what it saw and exits (with an error if
//! anything was wrong or took longer than 30 seconds).
//!
//! `cargo run -p bufring-tokio --example echo`

use std::io;
use std::time::{Duration, Instant};

use bufring_tokio::{RecvStream, Uring};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLIENTS: u64 = 16;
const BYTES: usize = 1 << 20;

fn byte(seed: u64, i: usize) -> u8 {
    ((i as u64 * 31 + seed * 7 + (i as u64 >> 9)) % 251) as u8
}

/// Echoes one connection until its end; returns the bytes echoed.
async fn serve(mut stream: RecvStream) -> io::Result<u64> {
    let mut echoed = 0;
    while let Some(chunk) = stream.recv().await {
        let chunk = chunk?;
        echoed += chunk.len() as u64;
        stream.send(chunk).await?; // from the pool buffer it arrived in
    }
    Ok(echoed) // dropping the stream closes the socket once the echo has gone
}

/// Uploads `BYTES` while reading the echo back; checks every byte.
async fn client(addr: std::net::SocketAddr, seed: u64) -> io::Result<()> {
    let (mut rd, mut wr) = TcpStream::connect(addr).await?.into_split();
    let upload = async move {
        let data: Vec<u8> = (0..BYTES).map(|i| byte(seed, i)).collect();
        for piece in data.chunks(50_000) {
            wr.write_all(piece).await?;
        }
        wr.shutdown().await
    };
    let download = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0;
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            for (k, &b) in buf[..n].iter().enumerate() {
                if b != byte(seed, at + k) {
                    return Err(io::Error::other(format!(
                        "client {seed}: byte {} differs",
                        at + k
                    )));
                }
            }
            at += n;
        }
        if at != BYTES {
            return Err(io::Error::other(format!(
                "client {seed}: {at} of {BYTES} bytes"
            )));
        }
        Ok(())
    };
    tokio::try_join!(upload, download).map(|_| ())
}

async fn run() -> io::Result<()> {
    let uring = Uring::new()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    let server = {
        let uring = uring.clone();
        tokio::spawn(async move {
            let mut conns = Vec::new();
            for _ in 0..CLIENTS {
                let (tcp, _) = listener.accept().await?;
                conns.push(tokio::spawn(serve(uring.recv_stream(tcp)?)));
            }
            let mut total = 0;
            for c in conns {
                total += c.await.map_err(io::Error::other)??;
            }
            io::Result::Ok(total)
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|seed| tokio::spawn(client(addr, seed)))
        .collect();
    for c in clients {
        c.await.map_err(io::Error::other)??;
    }
    let echoed = server.await.map_err(io::Error::other)??;
    let stats = uring.stats().await?;
    println!(
        "echoed {echoed} bytes over {CLIENTS} connections in {:?}, all checked",
        start.elapsed()
    );
    println!(
        "pool: {} buffers, at most {} held by the application at once; {} completions",
        stats.pool.buffers, stats.pool.peak_with_app, stats.driver.completions
    );
    if echoed != CLIENTS * BYTES as u64 {
        return Err(io::Error::other("the server echoed the wrong amount"));
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> io::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), run())
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "not done in 30 s"))?
}
