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
//! # fn main() -> bufring::Result<()> {
//! let mut driver = Driver::new()?;
//! let pool = driver.add_pool(Pool::builder(0).count(64).buf_len(64 * 1024).incremental(Incremental::Auto))?;
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| bufring::Error::Kernel { op: "bind".into(), source: e })?;
//! driver.listen(listener)?;
//! loop {
//!     driver.run_once(None)?;
//!     while let Some(event) = driver.next_event() {
//!         match event {
//!             Event::Accepted { socket, .. } => driver.recv(socket, pool)?,
//!             Event::Readable { socket } => {
//!                 while let Some(r) = driver.read(socket)? {
//!                     match r {
//!                         Received::Data(chunk) => driver.send(socket, chunk)?, // echo, no copy
//!                         Received::End | Received::Error(_) => driver.close(socket)?,
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
//!   reads bring the queue under half of it.
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

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{opcode, squeue, IoUring};

use crate::error::{Error, Result};
use crate::{Chunk, Completion, Cqe, Pool, PoolBuilder, PoolStats};

mod ops;
pub(crate) mod policy;
mod socket;

use ops::{Op, Ops};
use policy::Elastic;
use socket::{Batch, End, RecvState, Socket, MAX_IOV};

/// A pool added to a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolId(usize);

/// A socket the driver owns. Dead once [`Event::Closed`] was sent for it: calls naming it then
/// fail with [`Error::NotOpen`], and the slot's next socket gets another id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId(u64);

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
    /// A send on `socket` failed; what was queued to send is dropped.
    SendFailed {
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

/// What [`Driver::read`] takes from a receive queue.
#[derive(Debug)]
pub enum Received {
    /// Bytes, in stream order.
    Data(Chunk),
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
    /// Receives stopped because their queue reached its quota.
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

/// Configures a [`Driver`].
#[derive(Debug, Clone)]
pub struct DriverBuilder {
    entries: u32,
    cq_entries: u32,
    quota: (usize, usize),
    initial_posted: u32,
    min_posted: u32,
    elastic: bool,
    window: Duration,
    defer_taskrun: bool,
}

impl Default for DriverBuilder {
    fn default() -> Self {
        DriverBuilder {
            entries: 256,
            cq_entries: 8192,
            quota: (64 * 1024, 1 << 20),
            initial_posted: 4,
            min_posted: 2,
            elastic: true,
            window: Duration::from_secs(1),
            defer_taskrun: true,
        }
    }
}

impl DriverBuilder {
    /// Submission queue entries (default 256).
    pub fn entries(mut self, n: u32) -> Self {
        self.entries = n;
        self
    }

    /// Completion queue entries (default 8192: a full queue ends multishot receives early).
    pub fn cq_entries(mut self, n: u32) -> Self {
        self.cq_entries = n;
        self
    }

    /// Bounds of a socket's receive quota, in bytes: a fair share of its pool, at least
    /// `floor`, at most `ceiling` (default 64 KiB and 1 MiB).
    pub fn recv_quota(mut self, floor: usize, ceiling: usize) -> Self {
        self.quota = (floor, ceiling);
        self
    }

    /// Buffers a pool posts at the start, unless its builder says
    /// ([`PoolBuilder::posted`]); default 4.
    pub fn initial_posted(mut self, n: u32) -> Self {
        self.initial_posted = n;
        self
    }

    /// The fewest buffers elastic posting keeps posted (default 2).
    pub fn min_posted(mut self, n: u32) -> Self {
        self.min_posted = n;
        self
    }

    /// Elastic posting on (default) or off (every buffer stays posted, as with a raw pool).
    pub fn elastic(mut self, on: bool) -> Self {
        self.elastic = on;
        self
    }

    /// How often elastic posting shrinks targets and gives idle pages back (default 1 s).
    pub fn window(mut self, d: Duration) -> Self {
        self.window = d;
        self
    }

    /// Ask for IORING_SETUP_DEFER_TASKRUN (default on, where the kernel has it): completions
    /// are processed when the driver waits or steps, not on interrupts.
    pub fn defer_taskrun(mut self, on: bool) -> Self {
        self.defer_taskrun = on;
        self
    }

    /// Checks the configuration and makes the driver, with its ring and eventfd.
    pub fn build(self) -> Result<Driver> {
        if self.entries == 0 || self.cq_entries < self.entries {
            return Err(Error::config(
                "entries",
                format!(
                    "{} submission and {} completion entries: need 1 or more, and at least as many completion entries",
                    self.entries, self.cq_entries
                ),
            ));
        }
        if self.quota.0 == 0 || self.quota.0 > self.quota.1 {
            return Err(Error::config(
                "recv_quota",
                format!(
                    "floor {} and ceiling {}: need 0 < floor <= ceiling",
                    self.quota.0, self.quota.1
                ),
            ));
        }
        if self.initial_posted == 0 || self.min_posted == 0 {
            return Err(Error::config(
                "initial_posted",
                "a pool needs at least one buffer posted",
            ));
        }
        if self.window.is_zero() {
            return Err(Error::config(
                "window",
                "the elastic window must not be zero",
            ));
        }
        let mut b = IoUring::builder();
        b.setup_cqsize(self.cq_entries);
        let ring = {
            let mut fast = b.clone();
            // TASKRUN_FLAG: the kernel flags deferred work in the SQ ring, so a non-waiting step
            // (`poll`) knows to enter with GETEVENTS and run it.
            fast.setup_single_issuer()
                .setup_coop_taskrun()
                .setup_taskrun_flag();
            if self.defer_taskrun {
                fast.setup_defer_taskrun();
            }
            fast.build(self.entries).or_else(|_| b.build(self.entries))
        }
        .map_err(|e| Error::kernel("io_uring_setup", e))?;
        // SAFETY: eventfd has no memory-safety preconditions.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(Error::kernel("eventfd", io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd that nothing else owns.
        let notify = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let mut d = Driver {
            pools: Vec::new(),
            sockets: Vec::new(),
            free_sockets: Vec::new(),
            listeners: Vec::new(),
            ops: Ops::default(),
            ring,
            events: VecDeque::new(),
            backlog: VecDeque::new(),
            submit_error: None,
            waker: Arc::new(WakerInner {
                fd: Arc::clone(&notify),
                woken: AtomicBool::new(false),
            }),
            notify,
            wake_armed: false,
            ready: None,
            multishot_recv: true,
            recv_limit: true,
            multishot_accept: true,
            cfg: self,
            stats: DriverStats::default(),
            cqes: Vec::new(),
            window_start: Instant::now(),
            next_idle_check: None,
            idle_sockets: 0,
            accept_retry: None,
            accept_backoff: Duration::from_millis(10),
            _not_send: PhantomData,
        };
        d.arm_wake();
        Ok(d)
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
}

struct SockSlot {
    gen: u32,
    sock: Option<Socket>,
}

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

    // ---- pools ----------------------------------------------------------------------------

    /// Builds a pool on the driver's ring. Unless the builder says how many buffers to post
    /// ([`PoolBuilder::posted`]), it starts with [`DriverBuilder::initial_posted`] and elastic
    /// posting takes it from there.
    pub fn add_pool(&mut self, builder: PoolBuilder) -> Result<PoolId> {
        let (posted, count, _) = builder.sizes();
        let count = count.min(u32::MAX as usize) as u32;
        let start = match (posted, self.cfg.elastic) {
            (Some(n), _) => n,
            (None, true) => self.cfg.initial_posted.min(count.max(1)),
            (None, false) => count.max(1),
        };
        let pool = builder.posted(start).build(&self.ring)?;
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
        });
        Ok(PoolId(self.pools.len() - 1))
    }

    /// A pool of this driver (its statistics, its settings).
    pub fn pool(&self, id: PoolId) -> Result<&Pool> {
        self.pools
            .get(id.0)
            .map(|p| &p.pool)
            .ok_or(Error::NotOpen { what: "pool" })
    }

    // ---- sockets --------------------------------------------------------------------------

    /// Takes ownership of a connected socket (a `TcpStream`, `UnixStream`, or its fd).
    pub fn socket(&mut self, fd: impl Into<OwnedFd>) -> SocketId {
        let sock = Socket::new(fd.into(), Instant::now());
        self.stats.sockets += 1;
        let idx = match self.free_sockets.pop() {
            Some(i) => i,
            None => {
                self.sockets.push(SockSlot { gen: 0, sock: None });
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

    /// Opens a TCP socket and connects it to `addr`, giving up after `timeout` if one is given
    /// (a linked io_uring timeout). [`Event::Connected`] tells the outcome.
    pub fn connect(&mut self, addr: SocketAddr, timeout: Option<Duration>) -> Result<SocketId> {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: socket(2) has no memory-safety preconditions.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(Error::kernel("socket", io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd that nothing else owns.
        let s = self.socket(unsafe { OwnedFd::from_raw_fd(fd) });
        let (storage, len) = sockaddr(&addr);
        let idx = s.0 as u32;
        let addr = Box::new((storage, len));
        let entry = opcode::Connect::new(
            Fd(fd),
            (&addr.0 as *const libc::sockaddr_storage).cast(),
            len,
        )
        .build();
        let sock = self.at(idx);
        sock.connecting = true;
        sock.inflight += 1 + u32::from(timeout.is_some());
        let ud = self.ops.insert(Op::Connect {
            sock: idx,
            _addr: addr,
        });
        self.at(idx).connect_op = Some(ud);
        match timeout {
            None => {
                // SAFETY: the address is boxed in the op, which lives until the connect's
                // completion; the fd stays open until the socket's requests have all ended.
                unsafe { self.push(entry.user_data(ud)) };
            }
            Some(t) => {
                let ts = ops::timespec(t);
                let link = opcode::LinkTimeout::new(&*ts).build();
                let tud = self.ops.insert(Op::ConnectTimeout { _ts: ts });
                // SAFETY: as above; the timespec is boxed in its own op until the linked
                // timeout's completion (always posted).
                unsafe {
                    self.push(entry.user_data(ud).flags(squeue::Flags::IO_LINK));
                    self.push(link.user_data(tud));
                }
            }
        }
        Ok(s)
    }

    /// Starts receiving on `s` into buffers of `pool`: what arrives is queued for
    /// [`read`](Self::read), announced by [`Event::Readable`].
    pub fn recv(&mut self, s: SocketId, pool: PoolId) -> Result<()> {
        let idx = self.live(s)?;
        if pool.0 >= self.pools.len() {
            return Err(Error::NotOpen { what: "pool" });
        }
        let sock = self.at(idx);
        if sock.recv != RecvState::Off {
            return Err(Error::InvalidState {
                op: "recv",
                reason: "the socket is already receiving",
            });
        }
        if sock.end.is_some() {
            return Err(Error::InvalidState {
                op: "recv",
                reason: "the socket's stream has ended",
            });
        }
        sock.pool = pool.0;
        sock.recv = RecvState::Paused;
        self.pools[pool.0].receivers += 1;
        self.arm_recv(idx);
        Ok(())
    }

    /// Takes the next item of `s`'s receive queue: data in stream order, then the end (once),
    /// then nothing. `Ok(None)` means nothing has arrived yet.
    pub fn read(&mut self, s: SocketId) -> Result<Option<Received>> {
        let idx = self.live(s)?;
        let sock = self.at(idx);
        if let Some(c) = sock.rx.pop_front() {
            sock.rx_bytes -= c.len();
            if sock.rx.is_empty() {
                sock.throttled = false;
                if sock.end.is_none() {
                    sock.signalled = false;
                }
            }
            if sock.recv == RecvState::Paused {
                let pool = self.at(idx).pool;
                let quota = self.quota(pool);
                if self.at(idx).rx_bytes <= quota / 2 {
                    self.arm_recv(idx);
                }
            }
            return Ok(Some(Received::Data(c)));
        }
        sock.signalled = false;
        Ok(match sock.end.take() {
            Some(End::Eof) => Some(Received::End),
            Some(End::Error(e)) => Some(Received::Error(e)),
            None => None,
        })
    }

    /// Bytes received on `s` and not yet read.
    pub fn queued(&self, s: SocketId) -> Result<usize> {
        Ok(self.sock(s)?.rx_bytes)
    }

    /// Queues `chunk` to send on `s` (straight from its memory, no copy); the driver keeps it
    /// until it has been sent, resuming partial sends. [`Event::Sent`] tells when the queue is
    /// empty.
    pub fn send(&mut self, s: SocketId, chunk: Chunk) -> Result<()> {
        self.send_all(s, std::iter::once(chunk))
    }

    /// Queues several chunks to send on `s`, in order (sent together with sendmsg when more
    /// than one waits).
    pub fn send_all(&mut self, s: SocketId, chunks: impl IntoIterator<Item = Chunk>) -> Result<()> {
        let idx = self.live(s)?;
        let sock = self.at(idx);
        if sock.shutdown || sock.close_after_send {
            return Err(Error::InvalidState {
                op: "send",
                reason: "the socket's write side is shut down",
            });
        }
        for c in chunks {
            if !c.is_empty() {
                sock.tx_bytes += c.len();
                sock.tx.push_back(c);
            }
        }
        self.start_send(idx);
        Ok(())
    }

    /// Queues `bytes` to send on `s`, without copying them (see [`send`](Self::send)).
    pub fn send_bytes(&mut self, s: SocketId, bytes: Vec<u8>) -> Result<()> {
        let chunk = Chunk::try_from(bytes).map_err(|_| Error::InvalidState {
            op: "send_bytes",
            reason: "more than 4 GiB at once",
        })?;
        self.send(s, chunk)
    }

    /// Bytes queued to send on `s` and not yet sent.
    pub fn unsent(&self, s: SocketId) -> Result<usize> {
        Ok(self.sock(s)?.tx_bytes)
    }

    /// Shuts `s`'s write side down (the peer reads end of stream) once everything queued is
    /// sent. Receiving goes on.
    pub fn shutdown(&mut self, s: SocketId) -> Result<()> {
        let idx = self.live(s)?;
        self.at(idx).shutdown = true;
        self.finish_sends(idx);
        Ok(())
    }

    /// Closes `s` once everything queued to send has been sent (a send failure closes it
    /// too); [`Event::Closed`] follows.
    pub fn close(&mut self, s: SocketId) -> Result<()> {
        let idx = self.live(s)?;
        let sock = self.at(idx);
        sock.close_after_send = true;
        if sock.tx.is_empty() {
            self.teardown(idx, false);
        }
        Ok(())
    }

    /// Closes `s` now with a reset (SO_LINGER 0): the peer sees ECONNRESET rather than a clean
    /// end of stream, so it cannot mistake a cut transfer for a complete one. What was queued
    /// is dropped. [`Event::Closed`] follows.
    pub fn reset(&mut self, s: SocketId) -> Result<()> {
        let idx = self.live(s)?;
        self.teardown(idx, true);
        Ok(())
    }

    /// Reports [`Event::Idle`] when no data moved on `s` (nothing received, nothing sent) for
    /// `timeout`; `None` turns it off. Checked about every `timeout / 4` (at least every 10 ms).
    pub fn set_idle_timeout(&mut self, s: SocketId, timeout: Option<Duration>) -> Result<()> {
        let idx = self.live(s)?;
        let now = Instant::now();
        let sock = self.at(idx);
        let had = sock.idle_timeout.is_some();
        sock.idle_timeout = timeout;
        sock.active = now;
        sock.idle_signalled = false;
        match (had, timeout.is_some()) {
            (false, true) => self.idle_sockets += 1,
            (true, false) => self.idle_sockets -= 1,
            _ => {}
        }
        if let Some(t) = timeout {
            let check = now + (t / 4).max(Duration::from_millis(10));
            self.next_idle_check = Some(self.next_idle_check.map_or(check, |c| c.min(check)));
        }
        Ok(())
    }

    // ---- listeners, timers, waking --------------------------------------------------------

    /// Accepts connections on a listening socket (multishot accept where the kernel has it),
    /// each announced by [`Event::Accepted`]. When file descriptors run out, accepting pauses
    /// (no spinning) and resumes when one of the driver's sockets closes, or after a backoff.
    pub fn listen(&mut self, listener: impl Into<OwnedFd>) -> Result<ListenerId> {
        let idx = self.listeners.len();
        self.listeners.push(Listener {
            fd: Some(listener.into()),
            op: None,
            paused: false,
            closing: false,
            failed: false,
        });
        self.arm_accept(idx);
        Ok(ListenerId(idx as u64))
    }

    /// Stops accepting on `l` and closes it.
    pub fn close_listener(&mut self, l: ListenerId) -> Result<()> {
        let li = self
            .listeners
            .get_mut(l.0 as usize)
            .filter(|li| li.fd.is_some() && !li.closing)
            .ok_or(Error::NotOpen { what: "listener" })?;
        li.closing = true;
        match li.op {
            Some(ud) => self.cancel(ud, None),
            None => li.fd = None,
        }
        Ok(())
    }

    /// Fires [`Event::Timer`] after `after` (an io_uring timeout).
    pub fn timer(&mut self, after: Duration) -> TimerId {
        let ts = ops::timespec(after);
        let e = opcode::Timeout::new(&*ts).build();
        let ud = self.ops.insert(Op::Timer { _ts: ts });
        // SAFETY: the timespec is boxed in the op until the timeout's completion.
        unsafe { self.push(e.user_data(ud)) };
        TimerId(ud)
    }

    /// Cancels a timer that has not fired yet (no event then).
    pub fn cancel_timer(&mut self, t: TimerId) {
        if matches!(self.ops.get(t.0), Some(Op::Timer { .. })) {
            let e = opcode::TimeoutRemove::new(t.0).build();
            let ud = self.ops.insert(Op::TimerRemove);
            // SAFETY: a timeout removal points at nothing.
            unsafe { self.push(e.user_data(ud)) };
        }
    }

    /// A handle that wakes this driver from any thread.
    pub fn waker(&self) -> DriverWaker {
        DriverWaker {
            inner: Arc::clone(&self.waker),
        }
    }

    // ---- running --------------------------------------------------------------------------

    /// Submits what is queued, waits for at least one completion (at most `timeout`, if given;
    /// not at all if events are waiting), handles every completion there is, and applies the
    /// buffer policy. Then take the events with [`next_event`](Self::next_event).
    pub fn run_once(&mut self, timeout: Option<Duration>) -> Result<()> {
        let wait = if self.events.is_empty() {
            self.deadline(timeout)
        } else {
            Some(Duration::ZERO)
        };
        self.submit(wait)?;
        self.reap_and_settle();
        Ok(())
    }

    /// [`run_once`](Self::run_once) without waiting: what a runtime calls when the
    /// [readiness fd](Self::readiness_fd) is readable.
    pub fn poll(&mut self) -> Result<()> {
        if let Some(fd) = &self.ready {
            // Drain the counter first: work that arrives after this read signals it again.
            let mut word = 0u64;
            // SAFETY: reads at most 8 bytes into a live u64 from an eventfd we own.
            unsafe { libc::read(fd.as_raw_fd(), (&mut word as *mut u64).cast(), 8) };
        }
        self.run_once(Some(Duration::ZERO))
    }

    /// An fd that polls readable whenever the driver has work (completions, deferred task
    /// work, a [wake-up](DriverWaker)): register it with a runtime's reactor (level or edge
    /// triggered), and call [`poll`](Self::poll) when it is readable. An eventfd registered with
    /// the ring (IORING_REGISTER_EVENTFD), made on the first call. Unlike the ring's own fd, it
    /// also signals work deferred by IORING_SETUP_DEFER_TASKRUN, which the kernel runs only when
    /// the driver enters the ring.
    pub fn readiness_fd(&mut self) -> Result<BorrowedFd<'_>> {
        if self.ready.is_none() {
            // SAFETY: eventfd has no memory-safety preconditions.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if fd < 0 {
                return Err(Error::kernel("eventfd", io::Error::last_os_error()));
            }
            // SAFETY: a fresh fd that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            self.ring
                .submitter()
                .register_eventfd(fd.as_raw_fd())
                .map_err(|e| Error::kernel("register eventfd", e))?;
            self.ready = Some(fd);
        }
        Ok(self.ready.as_ref().expect("just made").as_fd())
    }

    /// The next event, if any.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The counters.
    pub fn stats(&self) -> DriverStats {
        let mut s = self.stats;
        s.return_wakes = self.pools.iter().map(|p| u64::from(p.pool.wakes())).sum();
        s
    }

    /// Requests in flight (receives, sends, accepts, timers, the driver's own eventfd read).
    pub fn in_flight(&self) -> usize {
        self.ops.live()
    }

    /// The statistics of every pool, in [`PoolId`] order.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        self.pools.iter().map(|p| p.pool.stats()).collect()
    }

    /// How long the next wait may last: the caller's timeout, cut short by the driver's own
    /// deadlines (idle checks, the elastic window, an accept retry).
    fn deadline(&self, timeout: Option<Duration>) -> Option<Duration> {
        let now = Instant::now();
        let mut at: Option<Instant> = timeout.map(|t| now + t);
        let mut cut = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if let Some(t) = self.next_idle_check {
            cut(t);
        }
        if let Some(t) = self.accept_retry {
            cut(t);
        }
        if self
            .pools
            .iter()
            .any(|p| p.elastic.target > p.elastic.min || p.pool.stats().parked > 0)
        {
            cut(self.window_start + self.cfg.window);
        }
        at.map(|a| a.saturating_duration_since(now))
    }

    fn submit(&mut self, wait: Option<Duration>) -> Result<()> {
        if let Some(e) = self.submit_error.take() {
            return Err(Error::kernel("io_uring_enter", e));
        }
        self.flush_backlog();
        let want = usize::from(wait != Some(Duration::ZERO));
        let r = match wait {
            Some(t) if want == 1 => {
                let ts = Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            Some(_) => self.ring.submit(),
            None => self.ring.submit_and_wait(1),
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::kernel("io_uring_enter", e)),
        }
    }

    /// Queues an SQE, submitting first if the queue is full. If the kernel will not take
    /// submissions (EBUSY: completions wait in its overflow list), the SQE waits in `backlog`,
    /// and so does every later one, to keep their order.
    ///
    /// # Safety
    /// Whatever the entry points at stays valid until its last completion: it is owned by the
    /// op its user_data names (freed only at that completion), by a socket whose in-flight
    /// count includes the request (freed only at zero), or by the driver.
    unsafe fn push(&mut self, e: squeue::Entry) {
        if self.backlog.is_empty() {
            loop {
                // SAFETY: passed on from the caller.
                if unsafe { self.ring.submission().push(&e) }.is_ok() {
                    return;
                }
                match self.ring.submit() {
                    Ok(_) => {}
                    Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
                    Err(err) if err.raw_os_error() == Some(libc::EBUSY) => break,
                    Err(err) => {
                        self.submit_error = Some(err);
                        break;
                    }
                }
            }
        }
        self.backlog.push_back(e);
    }

    fn flush_backlog(&mut self) {
        while let Some(e) = self.backlog.front() {
            // SAFETY: the entry was vouched for when it was pushed (see `push`).
            if unsafe { self.ring.submission().push(e) }.is_err() {
                if self.ring.submit().is_err() {
                    return;
                }
                continue;
            }
            self.backlog.pop_front();
        }
    }

    fn reap_and_settle(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if cqes.is_empty() {
                break;
            }
            self.stats.completions += cqes.len() as u64;
            for &(ud, res, flags) in &cqes {
                self.dispatch(ud, res, flags);
            }
            cqes.clear();
            self.flush_backlog();
        }
        self.cqes = cqes;
        self.after_batch();
    }

    fn dispatch(&mut self, ud: u64, res: i32, flags: u32) {
        let more = Cqe::new(res, flags).more();
        let Some(op) = self.ops.get(ud) else {
            self.stats.stray += 1;
            return;
        };
        match *op {
            Op::Recv {
                sock,
                pool,
                multishot,
                limited,
            } => {
                let how = (multishot, limited);
                self.on_recv(ud, sock, pool, how, Cqe::new(res, flags));
            }
            Op::Accept { listener } => self.on_accept(ud, listener as usize, res, more),
            Op::Send { sock } => {
                self.ops.remove(ud);
                self.on_send(sock, res);
            }
            Op::Connect { sock, .. } => {
                self.ops.remove(ud);
                self.on_connect(sock, res);
            }
            Op::ConnectTimeout { .. } => {
                // The connect's own completion says what happened; this one only ends.
                self.ops.remove(ud);
            }
            Op::Cancel { sock } => {
                self.ops.remove(ud);
                if let Some(idx) = sock {
                    self.at(idx).inflight -= 1;
                    self.maybe_free(idx);
                }
            }
            Op::Timer { .. } => {
                if !more {
                    self.ops.remove(ud);
                }
                if res != -libc::ECANCELED {
                    self.events.push_back(Event::Timer { timer: TimerId(ud) });
                }
            }
            Op::TimerRemove => {
                self.ops.remove(ud);
            }
            Op::Wake { .. } => {
                self.ops.remove(ud);
                self.wake_armed = false;
                if self.waker.woken.swap(false, Ordering::Acquire) {
                    self.events.push_back(Event::Woken);
                }
                self.arm_wake();
            }
        }
    }

    // ---- receiving ------------------------------------------------------------------------

    fn quota(&self, pool: usize) -> usize {
        let p = &self.pools[pool];
        let bytes = u64::from(p.pool.count()) * u64::from(p.pool.buf_len());
        policy::quota(bytes, p.receivers, self.cfg.quota.0, self.cfg.quota.1)
    }

    /// Submits a receive for a socket that wants one (`Paused` or `Waiting`): multishot,
    /// limited to the room left under its quota where the kernel can; single-shot on kernels
    /// without multishot receives, and for a socket that went over its quota on kernels without
    /// the limit.
    fn arm_recv(&mut self, idx: u32) {
        let (multishot, limit) = (self.multishot_recv, self.recv_limit);
        let pool = self.at(idx).pool;
        let quota = self.quota(pool);
        let sock = self.at(idx);
        let Some(fd) = sock.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        sock.recv = RecvState::Armed;
        sock.inflight += 1;
        let room = quota
            .saturating_sub(sock.rx_bytes)
            .clamp(1, u32::MAX as usize) as u32;
        let throttled = sock.throttled;
        let p = &self.pools[pool].pool;
        let (e, multishot, limited) = if !multishot || (throttled && !limit) {
            (p.recv(fd), false, false)
        } else if limit {
            (p.recv_multishot_limit(fd, room), true, true)
        } else {
            (p.recv_multishot(fd), true, false)
        };
        let ud = self.ops.insert(Op::Recv {
            sock: idx,
            pool,
            multishot,
            limited,
        });
        self.at(idx).recv_op = Some(ud);
        // SAFETY: the pool lives as long as the driver, whose drop waits for every request (or
        // leaks the pool); the fd stays open until the socket's requests have ended.
        unsafe { self.push(e.user_data(ud)) };
    }

    /// A receive's completion; `how` is (multishot, limited) as it was submitted.
    fn on_recv(&mut self, ud: u64, idx: u32, pool: usize, how: (bool, bool), cqe: Cqe) {
        let more = cqe.more();
        if !more {
            self.ops.remove(ud);
            let sock = self.at(idx);
            sock.inflight -= 1;
            sock.recv_op = None;
        }
        // SAFETY: this CQE was reaped from the driver's ring, where the pool is registered; its
        // user_data names a live receive the driver submitted on this pool (stale or unknown
        // user_data never gets here), and each CQE is dispatched once.
        let completion = unsafe { self.pools[pool].pool.complete(cqe) };
        let quota = self.quota(pool);
        let sock = self.at(idx);
        if sock.closing {
            drop(completion);
            if !more {
                sock.recv = RecvState::Off;
                self.maybe_free(idx);
            }
            return;
        }
        let ended = !more && matches!(sock.recv, RecvState::Armed | RecvState::Cancelling);
        match completion {
            Err(_) => self.stats.rejected += 1,
            Ok(Completion::Data { chunks, .. }) => {
                for c in chunks {
                    sock.rx_bytes += c.len();
                    sock.rx.push_back(c);
                }
                sock.active = Instant::now();
                sock.idle_signalled = false;
                if !sock.signalled {
                    sock.signalled = true;
                    let id = self.id_of(idx);
                    self.events.push_back(Event::Readable { socket: id });
                }
                let sock = self.at(idx);
                if more && sock.recv == RecvState::Armed && sock.rx_bytes >= quota {
                    sock.recv = RecvState::Cancelling;
                    sock.throttled = true;
                    self.stats.quota_pauses += 1;
                    self.cancel(ud, Some(idx));
                }
            }
            Ok(Completion::EndOfStream) => {
                self.end_recv(idx, End::Eof);
                return;
            }
            Ok(Completion::NoBuffers) => {
                let gen = self.sockets[idx as usize].gen;
                self.at(idx).recv = RecvState::Waiting;
                let p = &mut self.pools[pool];
                p.waiting.push_back((idx, gen));
                p.starved = true;
                return;
            }
            Ok(Completion::Failed(e)) => match e.raw_os_error() {
                Some(libc::ECANCELED) => {}
                Some(libc::EINVAL) if how.1 => {
                    // No byte limit on multishot receives on this kernel.
                    self.recv_limit = false;
                }
                Some(libc::EINVAL) if how.0 => {
                    // No multishot receives on this kernel: one receive per completion.
                    self.multishot_recv = false;
                }
                _ => {
                    self.end_recv(idx, End::Error(e));
                    return;
                }
            },
        }
        if ended {
            // The receive ended (a quota cancel, a full completion queue, a single-shot
            // receive): start it again unless the queue is over its quota.
            let sock = self.at(idx);
            sock.recv = RecvState::Paused;
            if sock.rx_bytes < quota {
                self.arm_recv(idx);
            }
        }
    }

    /// The stream ended (end of file, or an error): queue the end after the data.
    fn end_recv(&mut self, idx: u32, end: End) {
        let sock = self.at(idx);
        let was_on = sock.recv != RecvState::Off;
        sock.end = Some(end);
        let pool = sock.pool;
        if let Some(ud) = sock.recv_op {
            // A multishot ended early by an error still has its final completion to come.
            self.cancel(ud, Some(idx));
        }
        let sock = self.at(idx);
        sock.recv = RecvState::Off;
        let notify = !sock.signalled;
        sock.signalled = true;
        if was_on {
            self.pools[pool].receivers -= 1;
        }
        if notify {
            let id = self.id_of(idx);
            self.events.push_back(Event::Readable { socket: id });
        }
    }

    // ---- sending --------------------------------------------------------------------------

    /// Sends the front of the queue if nothing is in flight: one `send` for one chunk, one
    /// `sendmsg` over up to 64 chunks.
    fn start_send(&mut self, idx: u32) {
        let sock = self.at(idx);
        if sock.sending > 0 || sock.tx.is_empty() || sock.closing || sock.connecting {
            return;
        }
        let Some(fd) = sock.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        let e = if sock.tx.len() == 1 {
            let c = &sock.tx[0];
            sock.sending = 1;
            opcode::Send::new(Fd(fd), c.as_ptr(), c.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            let batch = sock.batch.get_or_insert_with(|| {
                // SAFETY: msghdr and iovec are plain old data; all zero (null pointers, zero
                // lengths) is a valid value.
                Box::new(unsafe { std::mem::zeroed::<Batch>() })
            });
            let n = sock.tx.len().min(MAX_IOV);
            for (iov, c) in batch.iov.iter_mut().zip(sock.tx.iter()) {
                iov.iov_base = c.as_ptr() as *mut libc::c_void;
                iov.iov_len = c.len();
            }
            batch.msg.msg_iov = batch.iov.as_mut_ptr();
            batch.msg.msg_iovlen = n;
            sock.sending = n;
            opcode::SendMsg::new(Fd(fd), &batch.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        };
        sock.inflight += 1;
        let ud = self.ops.insert(Op::Send { sock: idx });
        self.at(idx).send_op = Some(ud);
        // SAFETY: the chunks stay in the socket's queue, and the boxed batch in the socket,
        // until this send completes: nothing removes the first `sending` chunks before then
        // (spills skip them; a closing socket keeps them), and the socket is freed only when
        // its in-flight count is zero.
        unsafe { self.push(e.user_data(ud)) };
    }

    fn on_send(&mut self, idx: u32, res: i32) {
        let sock = self.at(idx);
        sock.inflight -= 1;
        sock.sending = 0;
        sock.send_op = None;
        if sock.closing {
            sock.tx.clear();
            sock.tx_bytes = 0;
            self.maybe_free(idx);
            return;
        }
        if res > 0 {
            sock.consume_sent(res as usize);
            sock.active = Instant::now();
            sock.idle_signalled = false;
        }
        if std::mem::take(&mut sock.spill_cancel) && (res >= 0 || res == -libc::ECANCELED) {
            let (chunks, bytes) = sock.spill();
            self.stats.spilled_chunks += chunks as u64;
            self.stats.spilled_bytes += bytes as u64;
        } else if res <= 0 {
            let error = if res == 0 {
                io_err(libc::EPIPE)
            } else {
                io_err(-res)
            };
            sock.tx.clear();
            sock.tx_bytes = 0;
            let id = self.id_of(idx);
            self.events
                .push_back(Event::SendFailed { socket: id, error });
            if self.at(idx).close_after_send {
                self.teardown(idx, true);
            }
            return;
        }
        if self.at(idx).tx.is_empty() {
            self.finish_sends(idx);
        } else {
            self.start_send(idx);
        }
    }

    /// The send queue is empty: report it, then shut down or close if that was asked for.
    fn finish_sends(&mut self, idx: u32) {
        let sock = self.at(idx);
        if !sock.tx.is_empty() || sock.sending > 0 {
            return;
        }
        let (shutdown, close) = (sock.shutdown, sock.close_after_send);
        if shutdown {
            if let Some(fd) = &sock.fd {
                // SAFETY: shutdown(2) on an fd we own has no memory-safety preconditions.
                unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
            }
        }
        let id = self.id_of(idx);
        self.events.push_back(Event::Sent { socket: id });
        if close {
            self.teardown(idx, false);
        }
    }

    // ---- connecting, accepting ------------------------------------------------------------

    fn on_connect(&mut self, idx: u32, res: i32) {
        let sock = self.at(idx);
        sock.inflight -= 1;
        sock.connecting = false;
        sock.connect_op = None;
        if sock.closing {
            self.maybe_free(idx);
            return;
        }
        let result = match res {
            0 => Ok(()),
            r if r == -libc::ECANCELED => {
                self.stats.connect_timeouts += 1;
                Err(io_err(libc::ETIMEDOUT))
            }
            r => Err(io_err(-r)),
        };
        let id = self.id_of(idx);
        self.events
            .push_back(Event::Connected { socket: id, result });
        self.start_send(idx);
    }

    fn arm_accept(&mut self, li: usize) {
        let multishot = self.multishot_accept;
        let l = &mut self.listeners[li];
        let Some(fd) = l.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        if l.op.is_some() || l.closing || l.failed {
            return;
        }
        l.paused = false;
        let e = if multishot {
            opcode::AcceptMulti::new(Fd(fd))
                .flags(libc::SOCK_CLOEXEC)
                .build()
        } else {
            opcode::Accept::new(Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        };
        let ud = self.ops.insert(Op::Accept {
            listener: li as u32,
        });
        self.listeners[li].op = Some(ud);
        // SAFETY: an accept without an address points at nothing; the listener stays open
        // until its accept has ended.
        unsafe { self.push(e.user_data(ud)) };
    }

    fn on_accept(&mut self, ud: u64, li: usize, res: i32, more: bool) {
        if !more {
            self.ops.remove(ud);
            self.listeners[li].op = None;
        }
        let id = ListenerId(li as u64);
        if res >= 0 {
            // SAFETY: the kernel just made this fd for us.
            let fd = unsafe { OwnedFd::from_raw_fd(res as RawFd) };
            if self.listeners[li].closing {
                drop(fd);
            } else {
                let socket = self.socket(fd);
                self.events.push_back(Event::Accepted {
                    listener: id,
                    socket,
                });
            }
        } else {
            match -res {
                libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS => {
                    self.stats.accept_pauses += 1;
                    self.listeners[li].paused = true;
                    if more {
                        self.cancel(ud, None);
                    }
                    let at = Instant::now() + self.accept_backoff;
                    self.accept_retry = Some(self.accept_retry.map_or(at, |r| r.min(at)));
                    self.accept_backoff = (self.accept_backoff * 2).min(Duration::from_secs(1));
                    return;
                }
                libc::EINVAL if self.multishot_accept && !more => {
                    self.multishot_accept = false;
                }
                libc::ECANCELED | libc::ECONNABORTED | libc::EINTR | libc::EAGAIN => {}
                e => {
                    if !self.listeners[li].closing {
                        self.listeners[li].failed = true;
                        self.events.push_back(Event::AcceptFailed {
                            listener: id,
                            error: io_err(e),
                        });
                    }
                }
            }
        }
        let l = &mut self.listeners[li];
        if l.op.is_none() {
            if l.closing || l.failed {
                l.fd = None;
            } else if !l.paused {
                self.arm_accept(li);
            }
        }
    }

    /// Accepting may go on: a descriptor was freed, or the backoff passed.
    fn resume_accepts(&mut self) {
        self.accept_retry = None;
        for li in 0..self.listeners.len() {
            if self.listeners[li].paused {
                self.arm_accept(li);
            }
        }
    }

    // ---- closing --------------------------------------------------------------------------

    /// Cancels the request `target`; a socket's cancel counts in its in-flight requests.
    fn cancel(&mut self, target: u64, sock: Option<u32>) {
        if let Some(idx) = sock {
            self.at(idx).inflight += 1;
        }
        let e = opcode::AsyncCancel::new(target).build();
        let ud = self.ops.insert(Op::Cancel { sock });
        // SAFETY: a cancel points at nothing.
        unsafe { self.push(e.user_data(ud)) };
    }

    /// Closes the socket: cancels what is in flight, and frees the slot (closing the fd) once
    /// nothing is. `reset` sends a reset instead of a clean close.
    fn teardown(&mut self, idx: u32, reset: bool) {
        let sock = self.at(idx);
        if sock.closing {
            return;
        }
        sock.closing = true;
        if reset {
            if let Some(fd) = &sock.fd {
                set_linger_zero(fd.as_raw_fd());
            }
        }
        let was_on = sock.recv != RecvState::Off;
        sock.recv = RecvState::Off;
        sock.rx.clear();
        sock.rx_bytes = 0;
        sock.end = None;
        if sock.sending == 0 {
            sock.tx.clear();
            sock.tx_bytes = 0;
        }
        let pool = sock.pool;
        let uds = [sock.recv_op, sock.send_op, sock.connect_op];
        if sock.idle_timeout.take().is_some() {
            self.idle_sockets -= 1;
        }
        if was_on {
            self.pools[pool].receivers -= 1;
        }
        for ud in uds.into_iter().flatten() {
            self.cancel(ud, Some(idx));
        }
        self.maybe_free(idx);
    }

    fn maybe_free(&mut self, idx: u32) {
        let sock = self.at(idx);
        if !sock.closing || sock.inflight > 0 {
            return;
        }
        let id = self.id_of(idx);
        let slot = &mut self.sockets[idx as usize];
        slot.sock = None; // closes the fd
        slot.gen = slot.gen.wrapping_add(1);
        self.free_sockets.push(idx);
        self.stats.sockets -= 1;
        self.events.push_back(Event::Closed { socket: id });
        if self.listeners.iter().any(|l| l.paused) {
            self.resume_accepts();
        }
    }

    fn arm_wake(&mut self) {
        if self.wake_armed {
            return;
        }
        let mut word = Box::new(0u64);
        let e = opcode::Read::new(
            Fd(self.notify.as_raw_fd()),
            (&mut *word as *mut u64).cast(),
            8,
        )
        .build();
        let ud = self.ops.insert(Op::Wake { _word: word });
        self.wake_armed = true;
        // SAFETY: the word is boxed in the op until the read's completion; the eventfd lives
        // as long as the driver (and longer, in the `Arc`s).
        unsafe { self.push(e.user_data(ud)) };
    }

    // ---- the policy, once per batch -------------------------------------------------------

    fn after_batch(&mut self) {
        let now = Instant::now();
        for pi in 0..self.pools.len() {
            self.settle_pool(pi);
        }
        if now >= self.window_start + self.cfg.window {
            self.window_start = now;
            for p in &mut self.pools {
                if let Some(t) = p.elastic.on_window() {
                    p.pool.set_posted_target(t);
                    self.stats.target_changes += 1;
                }
                p.pool.trim_idle();
            }
        }
        if self.next_idle_check.is_some_and(|t| now >= t) {
            self.check_idle(now);
        }
        if self.accept_retry.is_some_and(|t| now >= t) {
            self.resume_accepts();
        }
    }

    /// Publishes returned buffers, adjusts the posted target, starts waiting receives again
    /// (first come, first served), spills when nothing else can free a buffer, and asks for a
    /// wake-up when receives still wait.
    fn settle_pool(&mut self, pi: usize) {
        for _round in 0..3 {
            let p = &mut self.pools[pi];
            p.pool.publish();
            let starved = std::mem::take(&mut p.starved);
            if let Some(t) = p.elastic.on_batch(p.pool.unused(), starved) {
                p.pool.set_posted_target(t);
                p.pool.publish();
                self.stats.target_changes += 1;
            }
            self.rearm_waiting(pi);
            let p = &mut self.pools[pi];
            if p.waiting.is_empty() {
                return;
            }
            let s = p.pool.stats();
            if p.pool.unused() == 0 && s.parked == 0 && s.posted_target == s.buffers {
                // Dry: every buffer is with the application or partly filled. Free one.
                self.spill(pi);
                if self.pools[pi].pool.has_returns() {
                    continue;
                }
            }
            if self.pools[pi].pool.want_wake() {
                return;
            }
            // Buffers came back meanwhile: go round again.
        }
    }

    /// Starts receives that waited for buffers, in the order they ran out, as many as the
    /// buffers the kernel has left can feed.
    fn rearm_waiting(&mut self, pi: usize) {
        let p = &self.pools[pi];
        let unused = p.pool.unused() as usize;
        let mut budget = if p.pool.is_incremental() {
            unused * 8
        } else {
            unused
        };
        while budget > 0 {
            let Some((idx, gen)) = self.pools[pi].waiting.pop_front() else {
                break;
            };
            let slot = &self.sockets[idx as usize];
            let valid = slot.gen == gen
                && slot
                    .sock
                    .as_ref()
                    .is_some_and(|s| !s.closing && s.recv == RecvState::Waiting);
            if !valid {
                continue;
            }
            self.stats.rearms_after_wait += 1;
            self.arm_recv(idx);
            budget -= 1;
        }
    }

    /// Moves chunks the driver holds to the heap, largest holder first, until a buffer of pool
    /// `pi` comes back. If none does, cancels sends in flight that hold pool chunks, so that
    /// theirs can move when they complete.
    fn spill(&mut self, pi: usize) {
        let mut holders: Vec<(usize, u32)> = self
            .sockets
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.sock.as_ref().map(|s| (s.pool_bytes(), i as u32)))
            .filter(|&(b, _)| b > 0)
            .collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        for &(_, idx) in &holders {
            let (chunks, bytes) = self.at(idx).spill();
            self.stats.spilled_chunks += chunks as u64;
            self.stats.spilled_bytes += bytes as u64;
            if self.pools[pi].pool.has_returns() {
                return;
            }
        }
        for &(_, idx) in &holders {
            let sock = self.at(idx);
            if sock.sending > 0
                && !sock.spill_cancel
                && sock.tx.iter().take(sock.sending).any(|c| c.in_pool())
            {
                sock.spill_cancel = true;
                let ud = sock.send_op.expect("a send is in flight");
                self.stats.spill_cancels += 1;
                self.cancel(ud, Some(idx));
            }
        }
    }

    fn check_idle(&mut self, now: Instant) {
        self.next_idle_check = None;
        if self.idle_sockets == 0 {
            return;
        }
        let mut next: Option<Instant> = None;
        for idx in 0..self.sockets.len() as u32 {
            let Some(sock) = self.sockets[idx as usize].sock.as_mut() else {
                continue;
            };
            let Some(t) = sock.idle_timeout else { continue };
            if sock.closing {
                continue;
            }
            if !sock.idle_signalled && now >= sock.active + t {
                sock.idle_signalled = true;
                self.stats.idle_timeouts += 1;
                let id = self.id_of(idx);
                self.events.push_back(Event::Idle { socket: id });
            }
            let sock = self.sockets[idx as usize].sock.as_ref().expect("live");
            let check = if sock.idle_signalled {
                now + (t / 4).max(Duration::from_millis(10))
            } else {
                (sock.active + t).max(now + Duration::from_millis(1))
            };
            next = Some(next.map_or(check, |n| n.min(check)));
        }
        self.next_idle_check = next;
    }
}

/// Test hooks (feature `model`).
#[cfg(feature = "model")]
impl Driver {
    /// The user_data of `s`'s receive in flight, if any: what a forged completion would name.
    pub fn recv_user_data(&self, s: SocketId) -> Option<u64> {
        self.sock(s).ok()?.recv_op
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

impl Drop for Driver {
    fn drop(&mut self) {
        // Cancel everything and wait (bounded) for the last completions, so that no memory the
        // kernel may still use is freed.
        let live: Vec<u64> = self.ops.user_data().collect();
        for ud in live {
            let e = opcode::AsyncCancel::new(ud).build();
            // Cancels carry the reserved user_data u64::MAX: they name no op.
            // SAFETY: a cancel points at nothing.
            unsafe { self.push(e.user_data(u64::MAX)) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.ops.live() > 0 && Instant::now() < deadline {
            if self.submit(Some(Duration::from_millis(50))).is_err() {
                break;
            }
            let cqes: Vec<(u64, bool)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), Cqe::new(c.result(), c.flags()).more()))
                .collect();
            for (ud, more) in cqes {
                if !more {
                    self.ops.remove(ud);
                }
            }
            self.flush_backlog();
        }
        if self.ops.live() > 0 {
            // Some request would not end: the kernel may still use what it points at. Keep all
            // of it (ops, sockets and their chunks, pools) mapped for good.
            let mut bytes = 0usize;
            for op in self.ops.drain() {
                std::mem::forget(op);
            }
            for slot in self.sockets.drain(..) {
                if let Some(s) = slot.sock {
                    bytes += s.pool_bytes();
                    std::mem::forget(s);
                }
            }
            for p in self.pools.drain(..) {
                bytes += p.pool.count() as usize * p.pool.buf_len() as usize;
                std::mem::forget(p);
            }
            crate::pool::record_leak(bytes);
        }
    }
}

fn set_linger_zero(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: passes a live linger struct of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage, which is aligned for it.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage, which is aligned for it.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
