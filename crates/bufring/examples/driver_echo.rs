//! The echo server of `examples/echo.rs` on the driver: no `unsafe`, no `user_data`, no
//! re-arming by hand. The template for a server on the driver:
//! - `listen` accepts; each accepted socket receives from one shared incremental pool;
//! - on `Readable` (data arrived) and `Sent` (the send queue drained), chunks move from the
//!   socket's receive queue to its send queue while less than `MAX_UNSENT` waits to be sent:
//!   that is backpressure, and past it the driver's receive quota stops the receive;
//! - the end of a stream closes the socket once its echo is sent.
//!
//! The driver decides what the raw pool leaves to you: how many buffers stay posted (elastic
//! posting), who gets buffers when they run out (quotas, first come first served), and what
//! to do when none are left (spill held chunks to the heap).
//!
//! `cargo run -p bufring --example driver_echo [-- CLIENTS]` serves on 127.0.0.1, runs its own
//! clients (64 by default, each sending 256 KiB in uneven pieces), checks every echoed byte and
//! exits; it fails if anything is lost or takes longer than 60 s.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bufring::driver::{Driver, Event, Received, SocketId};
use bufring::{Incremental, Pool};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Bytes a socket may have queued to send before the server stops reading from it.
const MAX_UNSENT: usize = 256 * 1024;

fn main() -> Result<()> {
    let clients: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 64,
    };
    let Ok(mut driver) = Driver::new() else {
        eprintln!("io_uring is unavailable here: nothing to show");
        return Ok(());
    };
    // 64 buffers of 64 KiB, shared by every connection; elastic posting starts with a few.
    let pool = driver.add_pool(
        Pool::builder(0)
            .count(64)
            .buf_len(64 * 1024)
            .incremental(Incremental::Auto),
    )?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    driver.listen(listener)?;
    println!("driver echo on {addr}: {clients} clients");

    let handles: Vec<_> = (0..clients)
        .map(|i| std::thread::spawn(move || client(addr, i)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut closed = 0;
    while closed < clients {
        if Instant::now() > deadline {
            return Err(format!("only {closed} of {clients} connections finished in 60 s").into());
        }
        driver.run_once(Some(Duration::from_millis(100)))?;
        while let Some(event) = driver.next_event() {
            let socket = match event {
                Event::Accepted { socket, .. } => {
                    driver.recv(socket, pool)?;
                    socket
                }
                Event::Readable { socket } | Event::Sent { socket } => socket,
                Event::Closed { .. } => {
                    closed += 1;
                    continue;
                }
                _ => continue,
            };
            echo(&mut driver, socket)?;
        }
    }
    for h in handles {
        h.join().map_err(|_| "client panicked")??;
    }
    let stats = driver.stats();
    let pool_stats = driver.pool_stats()[0];
    println!(
        "{clients} clients echoed and checked; peak buffers in use {}, posted target now {}, spilled {} chunks",
        pool_stats.peak_with_app, pool_stats.posted_target, stats.spilled_chunks
    );
    Ok(())
}

/// Moves what `socket` received to its send queue, while the queue leaves room.
fn echo(driver: &mut Driver, socket: SocketId) -> bufring::Result<()> {
    while driver.unsent(socket)? < MAX_UNSENT {
        match driver.read(socket)? {
            // Sent straight from the pool buffer; the buffer goes back once the send is done.
            Some(Received::Data(chunk)) => driver.send(socket, chunk)?,
            Some(Received::End) => return driver.close(socket),
            Some(Received::Error(e)) => {
                eprintln!("connection reset: {e}");
                return driver.reset(socket);
            }
            None => break,
        }
    }
    Ok(())
}

/// One client: sends 256 KiB in uneven pieces while reading the echo, checks every byte.
fn client(addr: SocketAddr, seed: usize) -> std::result::Result<(), String> {
    let data: Vec<u8> = (0..256 * 1024)
        .map(|k: usize| (k.wrapping_mul(31) ^ seed.wrapping_mul(131)) as u8)
        .collect();
    let mut sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut reader = sock.try_clone().map_err(|e| e.to_string())?;
    let expect = data.clone();
    let check = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(expect.len());
        reader.read_to_end(&mut got).map_err(|e| e.to_string())?;
        if got != expect {
            return Err(format!(
                "client {seed}: echo differs ({} bytes back)",
                got.len()
            ));
        }
        Ok(())
    });
    for piece in data.chunks(1000 + seed % 7000) {
        sock.write_all(piece).map_err(|e| e.to_string())?;
    }
    sock.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    check.join().map_err(|_| "checker panicked".to_string())?
}
