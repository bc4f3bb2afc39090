//! The driver: one io_uring per thread that bufring owns. It submits every request itself,
//! reaps every completion and routes it by user_data, so each CQE reaches the right pool
//! exactly once and the user never writes `unsafe`. Above the pools it applies the buffer
//! policy: elastic posting (memory follows traffic), receive quotas and first-come re-arming
//! (every connection makes progress), spilling held chunks to the heap when the pool is dry,
//! and a wake-up when a chunk dropped on another thread gives a buffer back.
//!
//! ```no_run
//! use bufring::driver::{Driver, Event, Received};
//! use bufring::{Incremental, Pool};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut driver = Driver::new()?;
//! let pool = driver.add_pool(
//!     Pool::builder(0).count(64).buf_len(64 * 1024).incremental(Incremental::Auto),
//! )?;
//! driver.listen(std::net::TcpListener::bind("127.0.0.1:8080")?)?;
//! loop {
//!     driver.run_once(None)?;
//!     while let Some(event) = driver.next_event() {
//!         match event {
//!             Event::Accepted { socket, .. } => driver.recv(socket, pool)?,
//!             Event::Readable { socket } => {
//!                 while let Some(r) = driver.read(socket)? {
//!                     match r {
//!                         Received::Data(chunk) => driver.send(socket, chunk)?, // echo, no copy
//!                         Received::End | Received::Error(_) => {
//!                             driver.close(socket)?; // its id is dead from here
//!                             break;
//!                         }
//!                     }
//!                 }
//!             }
//!             _ => {}
//!         }
//!     }
//! }
//! # }
//! ```
//!
//! # What the policy does
//! - **Elastic posting**: a pool starts with a few buffers posted
//!   ([`DriverBuilder::initial_posted`]); the target doubles when a receive finds the ring
//!   empty, grows by half when fewer than a quarter of it is left unused after a batch, and
//!   once a second gives back half of the slack the second never touched. Buffers beyond the
//!   target park, and those parked for a whole second give their pages back
//!   ([`Pool::trim_idle`]). Under steady load the pool's memory is what is in flight.
//! - **Quotas**: a socket's receive queue (chunks received and not yet [read](Driver::read))
//!   may hold a fair share of its pool (`pool bytes / receivers`, within
//!   [`DriverBuilder::recv_quota`]); past it the receive is stopped, and started again once
//!   reads bring the queue under half of it. For two sockets [linked](Driver::link) as the
//!   two ends of a forwarder, what one received and queued to send on the other counts too,
//!   until it is sent: a direction holds one share, not a share received and another unsent.
//! - **First come, first served**: receives that found the pool empty wait in line and are
//!   started again in that order as buffers come back, as many as the posted buffers can feed.
//! - **Spill**: when receives wait, nothing is parked and nothing is left in the ring, the
//!   chunks the driver holds (in receive queues, and queued to send but not in flight; sends
//!   in flight are cancelled for it) are copied to the heap, largest holder first, until a
//!   buffer comes back. So a small pool cannot deadlock, and a slow reader costs heap memory
//!   bounded by its quota, not the pool. Chunks the application holds itself are its own: it
//!   can [copy them out](crate::Chunk::to_heap).
//! - **Wake on return**: while receives wait for buffers, the last drop of a chunk on any
//!   thread wakes the driver (an eventfd the ring reads); when nobody waits it costs nothing.
//! - **Quiet sockets cost their record**: a socket that holds nothing (no data queued either
//!   way, no send or connect in flight) keeps only a 64-byte record (72 with its slot in the
//!   driver's table; its receive's user_data names the socket, so the receive in flight
//!   needs no record of its own); its queues live in a box made when data moves
//!   and given back when it is quiet again (up to 64 are kept per thread for reuse, so that
//!   request/response traffic does not allocate per message; [`DriverStats::busy_sockets`]
//!   counts the sockets that have one).
//! - **Bundles for bulk sockets**: on a pool built for bundles ([`PoolBuilder::bundles`]), a
//!   socket's receives are armed as bundles once it receives a piece of at least 16 KiB (or a
//!   whole buffer, if smaller), and as single-buffer receives again after a piece under an
//!   eighth of that. Bundles pay off on bulk streams and cost small messages: a 1 KiB
//!   request/response proxy used 12–29 % less CPU per request without them (6.18.44).
//!
//!
//! # Datagrams
//! A pool added with [`Driver::add_datagram_pool`] takes datagrams: a socket receiving from it
//! (UDP, or any datagram socket) gets a recvmsg multishot, and
//! [`read_datagram`](Driver::read_datagram) hands out each datagram whole, its payload a chunk
//! in place and its source address and control messages parsed ([`Datagram`]). Quotas, first
//! come first served and spills apply as for streams; a datagram's quota cost is its whole
//! message (header and payload). Such a socket sends each queued chunk as one datagram (never
//! several in one sendmsg), to its connected peer or, with [`send_to`](Driver::send_to), to
//! an address of its own; a datagram that fails is dropped alone. ([`read`](Driver::read) on
//! it gives each message raw, header and all.) An incremental datagram pool needs the ring's
//! `min_left` of at least the recvmsg header (a shorter tail fails the multishot with EFAULT;
//! see [`RecvMsg::check_pool`]); where the kernel lacks `min_left`, use a classic pool.
//!
//! [`PoolBuilder::bundles`]: crate::PoolBuilder::bundles

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{opcode, squeue, IoUring};

use crate::error::{Error, Result};
use crate::{Chunk, Completion, Cqe, Datagram, Pool, PoolBuilder, PoolStats, RecvMsg};

mod balance;
mod builder;
mod conn;
mod ops;
pub(crate) mod policy;
mod recv;
mod run;
mod send;
mod socket;

pub use builder::DriverBuilder;
use ops::{nz, parse_recv, recv_ud, Op, Ops, RecvUd};
use policy::Elastic;
use socket::{Batch, End, RecvState, Socket, MAX_IOV};

/// A pool added to a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolId(usize);

/// A socket the driver owns. Dead once [`Event::Closed`] was sent for it: calls naming it then
/// fail with [`Error::NotOpen`], and the slot's next socket gets another id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId(u64);

impl SocketId {
    /// The socket's slot in the driver: a small number, dense from 0 and reused once the
    /// socket is closed (the id is not: its generation changes). Index a `Vec` of your own
    /// per-socket state with it.
    pub fn slot(self) -> usize {
        self.0 as u32 as usize
    }
}

/// A listening socket the driver accepts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

/// A timer set with [`Driver::timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

/// What happened, in the order the driver saw it. Take them with [`Driver::next_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection came in on `listener`; the driver owns it as `socket` (not yet receiving:
    /// call [`Driver::recv`]).
    Accepted {
        /// The listener.
        listener: ListenerId,
        /// The new socket.
        socket: SocketId,
    },
    /// Accepting on `listener` stopped for good with `error` (file descriptor shortages are not
    /// reported here: accepting pauses and resumes by itself, see [`DriverStats::accept_pauses`]).
    AcceptFailed {
        /// The listener.
        listener: ListenerId,
        /// What the kernel said.
        error: io::Error,
    },
    /// A [`Driver::connect`] finished: `Ok` once connected, or the error (a connect timeout is
    /// `TimedOut`).
    Connected {
        /// The socket.
        socket: SocketId,
        /// The outcome.
        result: io::Result<()>,
    },
    /// `socket`'s receive queue has something to [read](Driver::read) (sent when it goes from
    /// empty to not empty).
    Readable {
        /// The socket.
        socket: SocketId,
    },
    /// Everything queued to send on `socket` has been sent.
    Sent {
        /// The socket.
        socket: SocketId,
    },
    /// A send on `socket` failed; what was queued to send is dropped (on a datagram socket,
    /// only the datagram that failed: the rest is still sent).
    SendFailed {
        /// The socket.
        socket: SocketId,
        /// What the kernel said.
        error: io::Error,
    },
    /// `socket`'s stream ended with an error (a reset, for example). Sent at once, even while
    /// received data is still queued and even while its receive is stopped at its quota (the
    /// driver watches a stopped receive's socket for errors), so that a reader that is not
    /// reading learns of it: [`read`](Driver::read) still gives the queued data, then
    /// [`Received::Error`].
    Failed {
        /// The socket.
        socket: SocketId,
        /// What the kernel said.
        error: io::Error,
    },
    /// No data moved on `socket` for its [idle timeout](Driver::set_idle_timeout).
    Idle {
        /// The socket.
        socket: SocketId,
    },
    /// `socket` is closed and its id is dead.
    Closed {
        /// The socket.
        socket: SocketId,
    },
    /// A [timer](Driver::timer) fired.
    Timer {
        /// The timer.
        timer: TimerId,
    },
    /// [`DriverWaker::wake`] was called.
    Woken,
}

impl Event {
    /// The socket the event is about, if any.
    pub fn socket(&self) -> Option<SocketId> {
        match self {
            Event::Accepted { socket, .. }
            | Event::Connected { socket, .. }
            | Event::Readable { socket }
            | Event::Sent { socket }
            | Event::SendFailed { socket, .. }
            | Event::Failed { socket, .. }
            | Event::Idle { socket }
            | Event::Closed { socket } => Some(*socket),
            Event::AcceptFailed { .. } | Event::Timer { .. } | Event::Woken => None,
        }
    }
}

/// What [`Driver::read`] takes from a receive queue (and, with `T` = [`Datagram`],
/// [`Driver::read_datagram`]).
#[derive(Debug)]
pub enum Received<T = Chunk> {
    /// Bytes, in stream order (or one datagram).
    Data(T),
    /// The peer closed its side: nothing follows.
    End,
    /// The receive failed (a reset, for example): nothing follows.
    Error(io::Error),
}

/// Counters of a driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverStats {
    /// Completions reaped.
    pub completions: u64,
    /// Completions that named no request in flight (a stale or forged user_data): dropped.
    pub stray: u64,
    /// Receive completions a pool refused as inconsistent: dropped.
    pub rejected: u64,
    /// Sockets open.
    pub sockets: u64,
    /// Receives stopped because their queue (with a [linked](Driver::link) socket's unsent
    /// bytes) reached its quota: by a cancel, or by not arming again the receive that ended.
    pub quota_pauses: u64,
    /// Receives started again after waiting for buffers.
    pub rearms_after_wait: u64,
    /// Chunks moved to the heap to free pool buffers, and their bytes.
    pub spilled_chunks: u64,
    /// Bytes copied to the heap by spills.
    pub spilled_bytes: u64,
    /// Sends in flight cancelled so that their chunks could be spilled.
    pub spill_cancels: u64,
    /// Times accepting paused for lack of file descriptors (or memory).
    pub accept_pauses: u64,
    /// Wake-ups of the driver by a chunk dropped elsewhere while receives waited for buffers.
    pub return_wakes: u64,
    /// Connects that timed out.
    pub connect_timeouts: u64,
    /// Idle timeouts reported.
    pub idle_timeouts: u64,
    /// Changes of a pool's posted target by elastic posting.
    pub target_changes: u64,
    /// Calls that submitted or waited (`io_uring_enter`, at most one each: the io-uring crate
    /// skips the system call when there is nothing to submit and nothing to wait for).
    pub enters: u64,
    /// Sockets holding queues now (data received and not read, data queued to send, a send or
    /// connect in flight). The rest cost only their record, 72 bytes: memory follows traffic.
    pub busy_sockets: u64,
    /// Receives armed (a multishot receive counts once, however many completions it brings).
    pub receives_armed: u64,
    /// Of those, bundle receives: on a pool built for bundles, only sockets receiving big
    /// pieces get them (see the module docs).
    pub bundle_receives: u64,
}

/// Wakes a driver from any thread ([`Event::Woken`]). Cheap to clone.
#[derive(Clone)]
pub struct DriverWaker {
    inner: Arc<WakerInner>,
}

struct WakerInner {
    fd: Arc<OwnedFd>,
    woken: AtomicBool,
}

impl DriverWaker {
    /// Makes the driver's current or next wait return, with an [`Event::Woken`].
    pub fn wake(&self) {
        self.inner.woken.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to the eventfd the `Arc` keeps open.
        unsafe { libc::write(self.inner.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

impl std::fmt::Debug for DriverWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverWaker").finish_non_exhaustive()
    }
}

struct PoolSlot {
    pool: Pool,
    elastic: Elastic,
    /// Sockets whose receive found the ring empty, in that order (slot, generation).
    waiting: VecDeque<(u32, u32)>,
    /// A receive found the ring empty in this batch.
    starved: bool,
    /// Sockets receiving from this pool.
    receivers: usize,
    /// Since when receives have waited with the pool dry (spill after a grace period).
    dry_since: Option<Instant>,
    /// A datagram pool's recvmsg settings (its `msghdr`, which requests in flight point at:
    /// it lives as long as the pool).
    recvmsg: Option<Box<RecvMsg>>,
}

struct SockSlot {
    gen: u32,
    /// The slot of the socket [linked](Driver::link) to this one (`NO_PEER`: none). In the
    /// padding after `gen`: the slot stays 72 bytes.
    peer: u32,
    sock: Option<Socket>,
}

/// `SockSlot::peer` of a socket linked to none.
const NO_PEER: u32 = u32::MAX;

struct Listener {
    fd: Option<OwnedFd>,
    /// The user_data of the accept in flight.
    op: Option<u64>,
    /// Accepting stopped for lack of descriptors; retried later.
    paused: bool,
    closing: bool,
    failed: bool,
}

/// One io_uring, its pools and its sockets, on one thread: bufring reaps and routes every
/// completion, so receiving needs no `unsafe`. See the [module docs](self).
///
/// The driver is not `Send`: it stays on the thread that made it (its ring is
/// IORING_SETUP_SINGLE_ISSUER where the kernel has it). Chunks it hands out are `Send` and may
/// be dropped anywhere.
pub struct Driver {
    // Field order is drop order; `Drop` first waits for every request in flight (or leaks what
    // the kernel may still use). Pools unregister before the ring closes.
    pools: Vec<PoolSlot>,
    sockets: Vec<SockSlot>,
    free_sockets: Vec<u32>,
    listeners: Vec<Listener>,
    ops: Ops,
    ring: IoUring,
    events: VecDeque<Event>,
    /// SQEs the kernel could not take yet (a full completion queue), in order.
    backlog: VecDeque<squeue::Entry>,
    submit_error: Option<io::Error>,
    waker: Arc<WakerInner>,
    notify: Arc<OwnedFd>,
    /// The eventfd read is in flight.
    wake_armed: bool,
    /// An eventfd registered with the ring (IORING_REGISTER_EVENTFD), made on demand for
    /// runtimes: readable whenever the driver has work.
    ready: Option<OwnedFd>,
    /// The ring defers task work (IORING_SETUP_DEFER_TASKRUN).
    deferred: bool,
    /// The ring came from the user's builder (`DriverBuilder::ring_builder`).
    custom_ring: bool,
    /// The fd of a socket being released, once its requests have ended.
    released: Option<OwnedFd>,
    /// The kernel takes multishot receives (Linux 6.0); found out at the first refusal.
    multishot_recv: bool,
    /// The kernel takes a byte limit on multishot receives (Linux 6.17); found out likewise.
    recv_limit: bool,
    /// The kernel takes multishot accepts (Linux 5.19).
    multishot_accept: bool,
    cfg: DriverBuilder,
    stats: DriverStats,
    cqes: Vec<(u64, i32, u32)>,
    window_start: Instant,
    /// When the current batch of completions was reaped.
    now: Instant,
    /// When the driver was built: sockets keep times as nanoseconds since then.
    epoch: Instant,
    /// Receives in flight: their user_data names their socket, so they are not in `ops`.
    recvs: usize,
    next_idle_check: Option<Instant>,
    /// Sockets with an idle timeout.
    idle_sockets: usize,
    accept_retry: Option<Instant>,
    accept_backoff: Duration,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("fd", &self.ring.as_raw_fd())
            .field("pools", &self.pools.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn sock_id(idx: u32, gen: u32) -> SocketId {
    SocketId(u64::from(gen) << 32 | u64::from(idx))
}

fn io_err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

impl Driver {
    /// A driver with the default configuration.
    pub fn new() -> Result<Driver> {
        DriverBuilder::default().build()
    }

    /// Starts configuring a driver.
    pub fn builder() -> DriverBuilder {
        DriverBuilder::default()
    }

    /// Builds a pool on the driver's ring. Unless the builder says how many buffers to post
    /// ([`PoolBuilder::posted`]), it starts with [`DriverBuilder::initial_posted`] and elastic
    /// posting takes it from there.
    pub fn add_pool(&mut self, builder: PoolBuilder) -> Result<PoolId> {
        self.add_pool_with(builder, None)
    }

    /// Adds a pool for datagram sockets (see [Datagrams](self#datagrams)): sockets receiving
    /// from it get a recvmsg multishot laid out by `msg` (how much room for the source address
    /// and for control messages), and [`read_datagram`](Self::read_datagram) parses what
    /// arrives.
    ///
    /// Fails with [`Error::InvalidConfig`] when the pool's buffers cannot hold `msg`'s header
    /// and some payload, or when it is incremental without a `min_left` of at least the header
    /// (see [`RecvMsg::check_pool`]), or built for bundles (recvmsg takes one buffer per
    /// datagram); with the pool's own errors otherwise.
    pub fn add_datagram_pool(&mut self, builder: PoolBuilder, msg: RecvMsg) -> Result<PoolId> {
        self.add_pool_with(builder, Some(Box::new(msg)))
    }

    fn add_pool_with(
        &mut self,
        builder: PoolBuilder,
        recvmsg: Option<Box<RecvMsg>>,
    ) -> Result<PoolId> {
        let (posted, count, _) = builder.sizes();
        let count = count.min(u32::MAX as usize) as u32;
        let start = match (posted, self.cfg.elastic) {
            (Some(n), _) => n,
            (None, true) => self.cfg.initial_posted.min(count.max(1)),
            (None, false) => count.max(1),
        };
        let pool = builder.posted(start).build(&self.ring)?;
        if let Some(msg) = &recvmsg {
            // Checked before any request can point at the pool (dropping it here is fine).
            msg.check_pool(&pool)?;
            if pool.bundles_declared() {
                return Err(Error::config(
                    "bundles",
                    "a datagram pool takes one buffer per datagram: recvmsg has no bundles",
                ));
            }
        }
        pool.set_notify(Arc::clone(&self.notify));
        let elastic = if self.cfg.elastic {
            Elastic::new(self.cfg.min_posted, count, start)
        } else {
            Elastic::new(count, count, count)
        };
        self.pools.push(PoolSlot {
            pool,
            elastic,
            waiting: VecDeque::new(),
            starved: false,
            receivers: 0,
            dry_since: None,
            recvmsg,
        });
        self.provide(self.pools.len() - 1);
        Ok(PoolId(self.pools.len() - 1))
    }

    /// A pool of this driver (its statistics, its settings).
    pub fn pool(&self, id: PoolId) -> Result<&Pool> {
        self.pools
            .get(id.0)
            .map(|p| &p.pool)
            .ok_or(Error::NotOpen { what: "pool" })
    }

    /// Takes ownership of a connected socket (a `TcpStream`, `UnixStream`, or its fd).
    pub fn socket(&mut self, fd: impl Into<OwnedFd>) -> SocketId {
        let sock = Socket::new(fd.into(), self.stamp(Instant::now()));
        self.stats.sockets += 1;
        let idx = match self.free_sockets.pop() {
            Some(i) => i,
            None => {
                self.sockets.push(SockSlot {
                    gen: 0,
                    peer: NO_PEER,
                    sock: None,
                });
                (self.sockets.len() - 1) as u32
            }
        };
        let slot = &mut self.sockets[idx as usize];
        slot.sock = Some(sock);
        sock_id(idx, slot.gen)
    }

    fn sock(&self, s: SocketId) -> Result<&Socket> {
        let slot = self
            .sockets
            .get(s.0 as u32 as usize)
            .filter(|slot| slot.gen == (s.0 >> 32) as u32)
            .ok_or(Error::NotOpen { what: "socket" })?;
        match &slot.sock {
            Some(sock) if !sock.closing => Ok(sock),
            _ => Err(Error::NotOpen { what: "socket" }),
        }
    }

    /// The slot of a live socket that is not closing.
    fn live(&self, s: SocketId) -> Result<u32> {
        self.sock(s).map(|_| s.0 as u32)
    }

    fn at(&mut self, idx: u32) -> &mut Socket {
        self.sockets[idx as usize]
            .sock
            .as_mut()
            .expect("a request names a live socket slot")
    }

    /// `t` as a socket keeps it: nanoseconds since the driver was built.
    fn stamp(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// A socket's time back as an `Instant`.
    fn instant(&self, stamp: u64) -> Instant {
        self.epoch + Duration::from_nanos(stamp)
    }

    fn id_of(&self, idx: u32) -> SocketId {
        sock_id(idx, self.sockets[idx as usize].gen)
    }

    /// The socket's file descriptor, to set options on it. The driver closes it.
    pub fn fd(&self, s: SocketId) -> Result<BorrowedFd<'_>> {
        self.sock(s)?
            .fd
            .as_ref()
            .map(|fd| fd.as_fd())
            .ok_or(Error::NotOpen { what: "socket" })
    }

    /// Reports [`Event::Idle`] when no data moved on `s` (nothing received, nothing sent, and
    /// the kernel's send queue did not shrink: a peer slowly reading what was sent is not idle)
    /// for `timeout`; `None` turns it off. Checked about every `timeout / 4` (at least every 10 ms).
    /// Kept in whole milliseconds: rounded up, at most `u32::MAX` ms (49 days).
    pub fn set_idle_timeout(&mut self, s: SocketId, timeout: Option<Duration>) -> Result<()> {
        let idx = self.live(s)?;
        let now = Instant::now();
        let stamp = self.stamp(now);
        let ms = timeout.map_or(0, |t| {
            let ms = t.as_nanos().div_ceil(1_000_000).max(1);
            ms.min(u128::from(u32::MAX)) as u32
        });
        let sock = self.at(idx);
        let had = sock.idle_ms != 0;
        sock.idle_ms = ms;
        sock.active = stamp;
        sock.idle_signalled = false;
        match (had, timeout.is_some()) {
            (false, true) => self.idle_sockets += 1,
            (true, false) => self.idle_sockets -= 1,
            _ => {}
        }
        if let Some(t) = timeout.map(|_| Duration::from_millis(u64::from(ms))) {
            let check = now + (t / 4).max(Duration::from_millis(10));
            self.next_idle_check = Some(self.next_idle_check.map_or(check, |c| c.min(check)));
        }
        Ok(())
    }

    /// How long no data moved on `s` (nothing received, nothing sent), as of the last batch
    /// of completions.
    pub fn idle_for(&self, s: SocketId) -> Result<Duration> {
        let active = self.instant(self.sock(s)?.active);
        Ok(self.now.saturating_duration_since(active))
    }

    /// Whether receives stop at their quota by the kernel's byte limit on multishot receives
    /// (Linux 6.17), rather than by a cancel after the fact: true until the kernel refuses the
    /// first limited receive.
    pub fn recv_limited(&self) -> bool {
        self.recv_limit
    }

    /// The counters.
    pub fn stats(&self) -> DriverStats {
        let mut s = self.stats;
        s.return_wakes = self.pools.iter().map(|p| u64::from(p.pool.wakes())).sum();
        let busy = self.sockets.iter().filter_map(|slot| slot.sock.as_ref());
        s.busy_sockets = busy.filter(|sock| sock.io.is_some()).count() as u64;
        s
    }

    /// Requests in flight (receives, sends, accepts, timers, the driver's own eventfd read).
    pub fn in_flight(&self) -> usize {
        self.ops.live() + self.recvs
    }

    /// The statistics of every pool, in [`PoolId`] order.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        self.pools.iter().map(|p| p.pool.stats()).collect()
    }

    /// A line per socket that is not idle (receive state, bytes queued and unsent, requests in
    /// flight) and per pool with receives waiting for buffers: for diagnosing a stall.
    pub fn dump(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (i, slot) in self.sockets.iter().enumerate() {
            let Some(s) = &slot.sock else { continue };
            if s.inflight == 0 && s.io.is_none() && s.recv == RecvState::Off {
                continue;
            }
            let (rx, tx) =
                s.io.as_ref()
                    .map_or((0, 0), |io| (io.rx.len(), io.tx.len()));
            let _ = writeln!(
                out,
                "socket {i}: recv {:?}{} queued {} ({} chunks) unsent {} ({} chunks, {} in flight){}{} inflight {} ops recv {:?} send {:?}",
                s.recv,
                if s.throttled { " throttled" } else { "" },
                s.rx_bytes(),
                rx,
                s.tx_bytes(),
                tx,
                s.sending(),
                if s.spill_cancel { " spill-cancel" } else { "" },
                if s.closing { " closing" } else { "" },
                s.inflight,
                s.recv_op,
                s.send_op(),
            );
        }
        for (i, p) in self.pools.iter().enumerate() {
            let _ = writeln!(
                out,
                "pool {i}: waiting {} unused {} dry since {:?} {:?}",
                p.waiting.len(),
                p.pool.unused(),
                p.dry_since.map(|t| t.elapsed()),
                p.pool.stats()
            );
        }
        out
    }
}

/// Test hooks (feature `model`).
#[cfg(feature = "model")]
impl Driver {
    /// The user_data of `s`'s receive in flight, if any: what a forged completion would name.
    pub fn recv_user_data(&self, s: SocketId) -> Option<u64> {
        self.sock(s).ok()?.recv_op.map(std::num::NonZeroU64::get)
    }
}

impl AsRawFd for Driver {
    /// The ring's fd. It polls readable when completions wait, but with
    /// IORING_SETUP_DEFER_TASKRUN (the default) not when work the kernel deferred to the driver
    /// arrives: runtimes should poll [`Driver::readiness_fd`] instead.
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}
