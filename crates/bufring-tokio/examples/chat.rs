//! A tokio chat server: every line a client sends goes to every other client. Thousands of
//! connections, nearly all idle, each receiving through one shared pool: an idle connection
//! holds no receive buffer, only what bufring-tokio keeps per stream.
//!
//! Self-checking and bounded: it starts the server on loopback, connects `--clients` tokio
//! clients (default 2000; fewer if the descriptor limit is lower), lets 10 of them talk (5 lines
//! each, spread over `--seconds`, default 2), checks that every client got every other talker's
//! lines once and in order, prints what it saw and exits (with an error if anything was wrong or
//! took longer than `--seconds` + 30 s).
//!
//! The driver runs as a task of the server's runtime where the kernel allows it (6.13 on:
//! `Builder::build_local`), on a thread of its own elsewhere (`Builder::build`, or always with
//! `--thread`).
//!
//! `cargo run -p bufring-tokio --example chat -- --clients 2000 --seconds 2`

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bufring_tokio::{Builder, RecvStream, StreamSender};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const TALKERS: usize = 10;
const LINES: usize = 5;
/// Longest line the server takes (a client that sends longer ones is cut off).
const MAX_LINE: usize = 4096;

/// Who is in the room, by connection number.
#[derive(Default)]
struct Room {
    members: RefCell<HashMap<usize, StreamSender>>,
    joined: Cell<usize>,
    lines: Cell<u64>,
}

impl Room {
    /// Sends `line` (from member `from`) to everyone else, each a copy of its own (a send
    /// takes its bytes). A send is queued when it is called; awaiting it holds this broadcaster
    /// back only while a member has more than the stream limit unsent.
    async fn broadcast(&self, from: usize, line: &[u8]) {
        let prefix = format!("{from}: ");
        let sends: Vec<_> = self
            .members
            .borrow()
            .iter()
            .filter(|(&id, _)| id != from)
            .map(|(_, s)| {
                let mut msg = Vec::with_capacity(prefix.len() + line.len());
                msg.extend_from_slice(prefix.as_bytes());
                msg.extend_from_slice(line);
                s.send_bytes(msg)
            })
            .collect();
        self.lines.set(self.lines.get() + 1);
        for send in sends {
            // A member that left or failed: its own task says goodbye.
            let _ = send.await;
        }
    }
}

/// One connection: lines in, broadcast out, until the client leaves.
async fn serve(id: usize, mut stream: RecvStream, room: Rc<Room>) -> io::Result<()> {
    room.members.borrow_mut().insert(id, stream.sender());
    room.joined.set(room.joined.get() + 1);
    let mut line = Vec::new();
    let r = async {
        while let Some(chunk) = stream.recv().await {
            for piece in chunk?.split_inclusive(|&b| b == b'\n') {
                line.extend_from_slice(piece);
                if line.len() > MAX_LINE {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
                }
                if line.ends_with(b"\n") {
                    room.broadcast(id, &line).await;
                    line.clear();
                }
            }
        }
        Ok(())
    }
    .await;
    room.members.borrow_mut().remove(&id);
    r
}

/// One client: talks if it is a talker (after `start`), and reads until it has every other
/// talker's lines, checking them.
async fn client(
    addr: std::net::SocketAddr,
    me: usize,
    mut start: tokio::sync::watch::Receiver<bool>,
    spread: Duration,
) -> io::Result<()> {
    let (rd, mut wr) = TcpStream::connect(addr).await?.into_split();
    let talker = me < TALKERS;
    let talk = async {
        if talker {
            start
                .wait_for(|&go| go)
                .await
                .map_err(|_| io::Error::other("no start"))?;
            for k in 0..LINES {
                tokio::time::sleep(spread / LINES as u32).await;
                wr.write_all(format!("line {k} from client {me}\n").as_bytes())
                    .await?;
            }
        }
        io::Result::Ok(())
    };
    let listen = async {
        let mut rd = BufReader::new(rd);
        let want = if talker { TALKERS - 1 } else { TALKERS } * LINES;
        let mut next = [0usize; TALKERS];
        let mut buf = String::new();
        for _ in 0..want {
            buf.clear();
            if rd.read_line(&mut buf).await? == 0 {
                return Err(io::Error::other(format!("client {me}: the server hung up")));
            }
            // "<server id>: line <k> from client <talker>\n"
            let bad = || io::Error::other(format!("client {me}: unexpected {buf:?}"));
            let (_, text) = buf.split_once(": ").ok_or_else(bad)?;
            let mut words = text.split_whitespace();
            let k: usize = words.nth(1).and_then(|w| w.parse().ok()).ok_or_else(bad)?;
            let from: usize = words.nth(2).and_then(|w| w.parse().ok()).ok_or_else(bad)?;
            if from >= TALKERS || from == me || next[from] != k {
                return Err(bad());
            }
            next[from] += 1;
        }
        Ok(())
    };
    tokio::try_join!(talk, listen)?;
    Ok(())
}

/// The soft limit on open descriptors (from /proc), if readable.
fn fd_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn run(clients: usize, spread: Duration, thread: bool) -> io::Result<()> {
    let builder = Builder::default();
    // The driver as a task of this runtime where the kernel allows it, else on its thread.
    let local = if thread {
        Err(io::Error::new(io::ErrorKind::Unsupported, "--thread"))
    } else {
        builder.clone().build_local()
    };
    let (uring, mode) = match local {
        Ok((uring, driver)) => {
            tokio::task::spawn_local(driver);
            (uring, "a task of the runtime")
        }
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            (builder.build()?, "a thread of its own")
        }
        Err(e) => return Err(e),
    };
    // A backlog for a burst of thousands of connects (bind's default is 128).
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse().expect("an address"))?;
    let listener: TcpListener = socket.listen(4096)?;
    let addr = listener.local_addr()?;
    let room = Rc::new(Room::default());
    let t0 = Instant::now();
    let server = {
        let (uring, room) = (uring.clone(), Rc::clone(&room));
        tokio::task::spawn_local(async move {
            let mut conns = Vec::with_capacity(clients);
            for id in 0..clients {
                let (tcp, _) = listener.accept().await?;
                let stream = uring.recv_stream(tcp)?;
                conns.push(tokio::task::spawn_local(serve(
                    id,
                    stream,
                    Rc::clone(&room),
                )));
            }
            for c in conns {
                c.await.map_err(io::Error::other)??;
            }
            io::Result::Ok(())
        })
    };
    let (start, go) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(clients);
    for me in 0..clients {
        tasks.push(tokio::task::spawn_local(client(
            addr,
            me,
            go.clone(),
            spread,
        )));
    }
    // Talk once everyone is in the room (bounded by the caller's timeout).
    while room.joined.get() < clients {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let connected = t0.elapsed();
    let idle = uring.stats().await?;
    start.send_replace(true);
    for t in tasks {
        t.await.map_err(io::Error::other)??;
    }
    server.await.map_err(io::Error::other)??;
    let stats = uring.stats().await?;
    let resident = |s: &bufring_tokio::UringStats| s.resident_bytes.unwrap_or(0) / 1024;
    println!(
        "chat: {clients} clients connected in {connected:?}; driver: {mode}; \
         {} lines broadcast, every client checked, in {:?}",
        room.lines.get(),
        t0.elapsed()
    );
    println!(
        "receive memory (pool pages resident): {} KiB with every client connected and idle, \
         {} KiB after the talk; a 16 KiB buffer per connection would be {} KiB",
        resident(&idle),
        resident(&stats),
        16 * clients
    );
    if room.lines.get() != (TALKERS * LINES) as u64 {
        return Err(io::Error::other("the server saw the wrong number of lines"));
    }
    Ok(())
}

fn main() -> io::Result<()> {
    let mut clients = 2000usize;
    let mut seconds = 2.0f64;
    let mut thread = false;
    let mut args = std::env::args().skip(1);
    let usage = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: chat [--clients N] [--seconds S] [--thread]",
        )
    };
    while let Some(a) = args.next() {
        if a == "--thread" {
            thread = true;
            continue;
        }
        let v = args.next().ok_or_else(usage)?;
        match a.as_str() {
            "--clients" => clients = v.parse().map_err(|_| usage())?,
            "--seconds" => seconds = v.parse().map_err(|_| usage())?,
            _ => return Err(usage()),
        }
    }
    if !(seconds > 0.0 && seconds <= 600.0) || clients <= TALKERS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--clients must be more than {TALKERS}, --seconds within (0, 600]"),
        ));
    }
    // Two descriptors per client (its end and the server's), and some to spare.
    if let Some(limit) = fd_limit() {
        let fit = limit.saturating_sub(64) / 2;
        if clients > fit {
            eprintln!("chat: {clients} clients need more descriptors than {limit}: {fit} clients");
            clients = fit.max(TALKERS + 1);
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let spread = Duration::from_secs_f64(seconds);
    let bound = spread + Duration::from_secs(30);
    tokio::task::LocalSet::new().block_on(&rt, async {
        tokio::time::timeout(bound, run(clients, spread, thread))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, format!("not done in {bound:?}"))
            })?
    })
}
