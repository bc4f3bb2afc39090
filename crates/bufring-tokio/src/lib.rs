//! bufring in tokio: keep your runtime, get io_uring provided-buffer receives.
//!
//! A [`Uring`] owns one [`bufring::driver::Driver`] (one io_uring, one shared incremental
//! buffer pool). Hand it a connected socket with [`Uring::recv_stream`] and you get a
//! [`RecvStream`]: a [`Stream`](futures_core::Stream) of [`Chunk`]s, pieces of pool buffers the
//! kernel picked only when data arrived, which give their buffer back when dropped (on any
//! thread). An idle connection holds no receive buffer.
//!
//! ```no_run
//! use bufring_tokio::Uring;
//! # async fn f() -> std::io::Result<()> {
//! let uring = Uring::new()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let (tcp, _) = listener.accept().await?;
//! let mut stream = uring.recv_stream(tcp)?;
//! while let Some(chunk) = stream.recv().await {
//!     let chunk = chunk?; // a reset is an error, then the end
//!     stream.send(chunk).await?; // echo, no copy: the driver sends from the pool buffer
//! }
//! # Ok(()) }
//! ```
//! `RecvStream` is a `futures_core::Stream` too: with `tokio-stream` or `futures`,
//! `stream.next().await` reads the same, and the stream combinators apply.
//!
//! # Adapters: frames, `Bytes`, `AsyncRead`
//! - [`RecvStream::frames`] cuts the stream into [`LengthPrefixed`] or [`Delimited`] frames:
//!   a stream of [`Frame`]s, each in place in its pool buffer when it lies in one chunk
//!   (copied once when it straddles two). No copy for most frames.
//! - [`RecvStream::into_bytes_stream`]: chunks as `bytes::Bytes` (`Bytes::from_owner`, no
//!   copy), for code that passes `Bytes` along.
//! - [`RecvStream::into_async_read`]: a `tokio::io::AsyncRead`, for code that needs one (a
//!   `tokio_util::codec::FramedRead`, say). It **copies** every byte into the reader's buffer.
//!
//! # Two modes: a driver thread, or a local task
//! The driver is `!Send`: one io_uring, submitted to and reaped by one thread. One driver per
//! tokio worker would not keep a socket's work on one thread anyway (the multi-thread runtime
//! moves tasks between workers). So a `Uring` runs its driver one of two ways; the handle, the
//! streams and everything below work the same in both.
//!
//! - **A thread of its own** ([`Builder::build`], [`Uring::new`]; the default, every kernel).
//!   The thread blocks in [`Driver::run_once`] between batches. It works from any runtime
//!   flavour, from several runtimes at once, or from plain threads: nothing needs a tokio
//!   reactor or spawns a task, and the ring keeps IORING_SETUP_DEFER_TASKRUN on every kernel.
//!   The cost is a thread hop per batch each way: the driver thread moves chunks (pointers, not
//!   bytes) into a stream's queue and wakes its task, and a task's command wakes the driver
//!   thread. The thread inherits the CPU affinity of the thread that built the `Uring`: pinned
//!   to one CPU, both share it.
//! - **A task of your runtime** ([`Builder::build_local`], kernels from 6.13). It returns the
//!   handle and a [`LocalDriver`] future to spawn with `tokio::task::spawn_local` on a
//!   `LocalSet` (a current-thread runtime, or one thread of a multi-thread one). Tokio's reactor
//!   watches the driver's [readiness fd](bufring::driver::Driver::readiness_fd) and
//!   [wake-up fd](bufring::driver::Driver::wake_fd); a batch of completions, the tasks it wakes
//!   and the sends they make run on that one thread, with no thread hop. The `LocalDriver` must
//!   be polled: a `LocalSet` that is not running (a `block_on` outside `run_until`, say) stalls
//!   every stream of that `Uring`. Streams still work from other threads (their commands wake
//!   the driver's task). On kernels before 6.13 `build_local` fails with `Unsupported` (the
//!   kernel does not wake a poller of the eventfd when data arrives): use `build` there, as
//!   `examples/chat.rs` does.
//!
//! Tasks talk to the driver's side through a command queue (an `std::sync::mpsc` channel); the
//! driver's side is woken only when it sleeps (a flag it sets before sleeping). It talks back
//! through each stream's shared state (a `Mutex` holding its queue of chunks, the task's
//! `Waker` and the send accounting); only queries (`stats`, `driver_queued`, `shutdown_write`,
//! `release`) wait for a reply. Make more than one `Uring` to spread receives over more
//! threads.
//!
//! # Backpressure
//! A stream's shared queue holds at most [`Builder::stream_limit`] bytes (default 256 KiB; an
//! empty queue takes one chunk, however long): a chunk that does not fit stays in the driver's
//! receive queue, and the driver's quota stops the
//! socket's receive when that queue is over its quota (a fair share of the pool, within
//! [`DriverBuilder::recv_quota`]). When the task has drained the shared queue under half the
//! limit, it asks the driver for more. So a consumer that stops reading holds at most
//! `stream_limit` + the quota, the kernel's socket buffer fills, and TCP flow control slows the
//! peer; other streams on the same `Uring` keep flowing.
//!
//! A chunk pins its pool buffer until dropped, and with an incremental pool one buffer holds
//! pieces of several streams. So that a consumer that stopped reading cannot hold pool buffers
//! others need, the driver copies the queue of a full stream whose task has not taken anything
//! for [`Builder::idle_spill`] (default 100 ms) to the heap (once; at most `stream_limit`
//! bytes), and the buffers go back to the kernel. The driver does the same for its own queues
//! when the pool runs dry. Chunks your code keeps elsewhere cannot be spilled
//! ([`Chunk::to_heap`] copies one).
//!
//! # Sending
//! The fd leaves tokio (`into_std`) and belongs to the driver: its receives are in flight on
//! it, and the driver closes it once they have ended. Keeping a tokio write half of it would
//! make a second owner that could close the fd under a request in flight (or let the number be
//! reused by another file). So sends go through the driver too: [`RecvStream::send`] (a chunk,
//! sent straight from its pool buffer, so an echo copies nothing) and
//! [`RecvStream::send_bytes`]; a [`StreamSender`] does the same from another task.
//!
//! A send is queued when it is called (order follows the calls). Its future resolves at once
//! while less than `stream_limit` waits to be sent (no round trip to the driver), else once the
//! driver has sent enough: that holds back a task that sends faster than the peer reads. `Ok`
//! means queued, not delivered: a send that fails later makes the stream's later sends fail
//! with its error. [`RecvStream::flush`] waits until everything queued has gone.
//!
//! # Datagrams
//! [`Uring::datagram_socket`] takes a UDP (or Unix datagram) socket and gives a
//! [`DatagramSocket`]: a `Stream` of [`Datagram`]s, each whole in one buffer of a second,
//! classic pool ([`Builder::datagram_buffers`], made with the first datagram socket), its
//! payload a chunk in place and its source address parsed. It replies with
//! [`DatagramSocket::send_to`] (a received payload goes back without a copy) or, connected,
//! [`DatagramSocket::send`]; each send is one datagram, and one that fails is dropped alone
//! (the next `flush` says why). The pool is classic, the same on every kernel (recvmsg on an
//! incremental ring needs the ring's `min_left`, which not every kernel has): a datagram
//! costs a whole buffer while it is held.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! let uring = bufring_tokio::Uring::new()?;
//! let udp = tokio::net::UdpSocket::bind("127.0.0.1:5353").await?;
//! let mut sock = uring.datagram_socket(udp)?;
//! while let Some(d) = sock.recv().await {
//!     let d = d?;
//!     if let Some(from) = d.source() {
//!         sock.send_to(d.into_payload(), from).await?; // echo, no copy
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Handing a socket back
//! [`RecvStream::release`] stops the receive, waits (bounded) for it to end and gives back the
//! fd with the bytes received and not yet taken ([`Released`]), so a protocol can move the
//! connection elsewhere without losing a byte.
//!
//! # Errors when taking a socket
//! [`Uring::recv_stream`] takes the socket by value: if it fails (a tokio stream that cannot
//! leave its reactor, or a driver that has stopped), the socket is closed, not given back. A
//! receive the driver cannot start shows as the stream's first item, an error.
//!
//! # Statistics
//! [`Uring::stats`]: the driver's counters, the pool's, the pool's resident bytes (its real
//! receive memory, by `mincore`), the streams open and the bytes idle-spilled.
//!
//! # Shutdown
//! Dropping a [`RecvStream`] closes its socket (after what was queued to send has gone). When
//! the last [`Uring`] handle is dropped, the driver stops: streams still alive get what was
//! already in their queue, then an error item (`ConnectionAborted`), then the end; the driver
//! is dropped (it cancels its requests and waits for them, at most 2 s). In the thread mode the
//! drop of the last handle joins the thread, waiting at most 5 seconds; that blocks the thread
//! it runs on (a runtime worker, in a task) for as long as the driver takes to cancel (the
//! shutdown test's runtime, 16 streams with receives armed and the driver thread included,
//! shuts down in about a millisecond on 6.18). In the in-runtime mode the [`LocalDriver`]
//! future resolves instead, and dropping it (a `LocalSet` dropped) ends the streams the same
//! way. No request outlives the memory it points at: a request that would not end makes the
//! driver keep its memory for good ([`bufring::leaks`] counts it).
//!
//! # Valgrind
//! The in-runtime mode's tests run under valgrind's memcheck in CI (scripts/valgrind.sh):
//! cancellation (a stream dropped mid-transfer, tasks aborted while they wait, the runtime
//! dropped with receives armed on 16 streams and a datagram socket), echo, datagrams and
//! frames. The driver-thread mode's cannot: memcheck (3.19) holds its lock while a thread
//! blocks in `io_uring_enter`, and the driver thread blocks there, so every other thread
//! stalls (a bound on the wait, [`Builder::max_wait`], still left the cancellation tests
//! running for more than 15 minutes). Both modes share the driver's side (`core.rs`) and the
//! streams; the driver underneath is covered by the `bufring` crate's memcheck run.
//!
//! [`Driver::run_once`]: bufring::driver::Driver::run_once
//! [`DriverBuilder::recv_quota`]: bufring::driver::DriverBuilder::recv_quota
//! [`Driver`]: bufring::driver::Driver
//! [`bufring::driver::Driver`]: bufring::driver::Driver
#![deny(missing_docs)]

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bufring::driver::{DriverBuilder, DriverStats, DriverWaker};
use bufring::{Incremental, PoolStats};

mod core;
mod datagram;
mod frames;
mod local;
mod stream;
mod thread;

pub use bufring::{Chunk, Datagram, Delimited, Frame, LengthPrefixed};
pub use datagram::DatagramSocket;
pub use frames::Frames;
pub use local::LocalDriver;
pub use stream::{BytesStream, ChunkReader, RecvStream, StreamSender};

use crate::core::{Cmd, Core};
use local::TaskWake;
use stream::Shared;

/// How long dropping the last [`Uring`] waits for its driver thread.
const JOIN_BOUND: Duration = Duration::from_secs(5);

/// A socket the driver can take: its fd, out of whatever owned it.
pub trait IntoSocket {
    /// The owned fd. tokio's streams leave tokio's reactor first.
    fn into_socket(self) -> io::Result<OwnedFd>;
}

impl IntoSocket for OwnedFd {
    fn into_socket(self) -> io::Result<OwnedFd> {
        Ok(self)
    }
}

impl IntoSocket for std::net::TcpStream {
    fn into_socket(self) -> io::Result<OwnedFd> {
        Ok(self.into())
    }
}

impl IntoSocket for std::os::unix::net::UnixStream {
    fn into_socket(self) -> io::Result<OwnedFd> {
        Ok(self.into())
    }
}

impl IntoSocket for tokio::net::TcpStream {
    fn into_socket(self) -> io::Result<OwnedFd> {
        Ok(self.into_std()?.into())
    }
}

impl IntoSocket for tokio::net::UnixStream {
    fn into_socket(self) -> io::Result<OwnedFd> {
        Ok(self.into_std()?.into())
    }
}

impl IntoSocket for std::net::UdpSocket {
    fn into_socket(self) -> io::Result<OwnedFd> {
        Ok(self.into())
    }
}

impl IntoSocket for tokio::net::UdpSocket {
    fn into_socket(self) -> io::Result<OwnedFd> {
        Ok(self.into_std()?.into())
    }
}

impl IntoSocket for std::os::unix::net::UnixDatagram {
    fn into_socket(self) -> io::Result<OwnedFd> {
        Ok(self.into())
    }
}

impl IntoSocket for tokio::net::UnixDatagram {
    fn into_socket(self) -> io::Result<OwnedFd> {
        Ok(self.into_std()?.into())
    }
}

/// Configures a [`Uring`].
#[derive(Debug, Clone)]
pub struct Builder {
    pub(crate) bgid: u16,
    pub(crate) buffers: usize,
    pub(crate) buf_len: usize,
    pub(crate) incremental: Incremental,
    pub(crate) stream_limit: usize,
    pub(crate) idle_spill: Option<Duration>,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) driver: DriverBuilder,
    pub(crate) datagram_buffers: usize,
    pub(crate) datagram_buf_len: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            bgid: 0,
            buffers: 256,
            buf_len: 64 * 1024,
            incremental: Incremental::Auto,
            stream_limit: 256 * 1024,
            idle_spill: Some(Duration::from_millis(100)),
            max_wait: None,
            driver: DriverBuilder::default(),
            datagram_buffers: 256,
            datagram_buf_len: 2048,
        }
    }
}

impl Builder {
    /// Buffers in the shared pool (default 256). The driver posts them elastically: memory
    /// follows traffic, not this number.
    pub fn buffers(mut self, n: usize) -> Self {
        self.buffers = n;
        self
    }

    /// Bytes per pool buffer (default 64 KiB).
    pub fn buf_len(mut self, len: usize) -> Self {
        self.buf_len = len;
        self
    }

    /// How buffers are consumed (default [`Incremental::Auto`]: a piece at a time, by the
    /// kernel where it can, emulated elsewhere).
    pub fn incremental(mut self, mode: Incremental) -> Self {
        self.incremental = mode;
        self
    }

    /// The buffer group id of the pool (default 0; the ring is the `Uring`'s own).
    pub fn bgid(mut self, bgid: u16) -> Self {
        self.bgid = bgid;
        self
    }

    /// Bytes a stream's shared queue may hold; a chunk that would go over stays in the driver's
    /// queue (default 256 KiB; an empty queue takes one chunk of any length). See
    /// [Backpressure](crate#backpressure).
    pub fn stream_limit(mut self, bytes: usize) -> Self {
        self.stream_limit = bytes.max(1);
        self
    }

    /// How long a full stream's task may take nothing before its queued chunks are copied to
    /// the heap, giving their pool buffers back (default 100 ms); `None`: never.
    pub fn idle_spill(mut self, after: Option<Duration>) -> Self {
        self.idle_spill = after;
        self
    }

    /// The longest the driver thread sleeps in the ring before looking at its commands again
    /// (default: no limit; commands wake it). Under valgrind's memcheck, which holds its lock
    /// while a thread blocks in `io_uring_enter`, a limit lets the other threads run now and
    /// then (slowly).
    pub fn max_wait(mut self, wait: Option<Duration>) -> Self {
        self.max_wait = wait;
        self
    }

    /// Buffers in the datagram pool (default 256), made with the first
    /// [`datagram_socket`](Uring::datagram_socket): one buffer per datagram (a classic pool,
    /// buffer group id [`bgid`](Self::bgid) + 1, or - 1 for 65535), posted elastically like the
    /// stream pool.
    pub fn datagram_buffers(mut self, n: usize) -> Self {
        self.datagram_buffers = n;
        self
    }

    /// Bytes per datagram buffer (default 2048): a 44-byte header (the recvmsg result and
    /// room for an IPv6 source) and the payload. Longer datagrams arrive cut short
    /// ([`Datagram::is_truncated`]).
    pub fn datagram_buf_len(mut self, len: usize) -> Self {
        self.datagram_buf_len = len;
        self
    }

    /// The driver's own configuration (ring size, receive quota, elastic posting, ...).
    pub fn driver(mut self, driver: DriverBuilder) -> Self {
        self.driver = driver;
        self
    }

    /// Builds the ring and the pool on the calling thread and returns the handle with the
    /// driver as a future to spawn on this thread (`tokio::task::spawn_local`, in a
    /// `LocalSet`): the [in-runtime mode](crate#two-modes-a-driver-thread-or-a-local-task).
    /// Call it inside the runtime (its reactor watches the driver's readiness fd; the runtime
    /// needs `enable_io`).
    ///
    /// Fails with `Unsupported` where the kernel does not wake a poller of the ring's eventfd
    /// when data arrives (kernels before 6.13: [`Driver::readiness_fd`]); use
    /// [`build`](Self::build) there. Also fails outside a runtime, on a runtime without I/O,
    /// and as the ring or the pool does.
    ///
    /// [`Driver::readiness_fd`]: bufring::driver::Driver::readiness_fd
    pub fn build_local(self) -> io::Result<(Uring, LocalDriver)> {
        let (tx, rx) = mpsc::channel();
        let sleeping = Arc::new(AtomicBool::new(false));
        let limit = self.stream_limit;
        let core = Core::new(&self, rx, Arc::clone(&sleeping))?;
        let task = Arc::new(TaskWake::default());
        let driver = LocalDriver::new(core, Arc::clone(&task))?;
        let link = Arc::new(Link {
            tx,
            waker: Wake::Task(task),
            sleeping,
            next_key: AtomicU64::new(0),
            limit,
        });
        let uring = Uring {
            owner: Arc::new(Owner {
                link,
                thread: Mutex::new(None),
            }),
        };
        Ok((uring, driver))
    }

    /// Spawns the driver thread, with its ring and pool. Fails as the ring or the pool does
    /// (io_uring refused, for example).
    pub fn build(self) -> io::Result<Uring> {
        let (tx, rx) = mpsc::channel();
        let (init_tx, init_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let limit = self.stream_limit;
        let sleeping = Arc::new(AtomicBool::new(false));
        let thread_sleeping = Arc::clone(&sleeping);
        let thread = std::thread::Builder::new()
            .name("bufring-tokio".into())
            .spawn(move || thread::run(self, rx, thread_sleeping, init_tx, done_tx))?;
        let waker = match init_rx.recv() {
            Ok(Ok(waker)) => waker,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(io::Error::other("the bufring-tokio driver thread died"));
            }
        };
        let link = Arc::new(Link {
            tx,
            waker: Wake::Ring(waker),
            sleeping,
            next_key: AtomicU64::new(0),
            limit,
        });
        Ok(Uring {
            owner: Arc::new(Owner {
                link,
                thread: Mutex::new(Some((thread, done_rx))),
            }),
        })
    }
}

/// How a command wakes the driver's side.
enum Wake {
    /// The driver thread, asleep in the ring.
    Ring(DriverWaker),
    /// The `LocalDriver` task.
    Task(Arc<TaskWake>),
}

/// What the driver's side and the streams share: the command queue and the waker.
pub(crate) struct Link {
    tx: mpsc::Sender<Cmd>,
    waker: Wake,
    /// The driver thread is (about to be) asleep in the ring and must be woken for a command.
    /// While it is busy, commands need no wake-up: it looks at the queue before sleeping. The
    /// first command to find it asleep clears the flag and wakes it: one eventfd write per
    /// sleep.
    sleeping: Arc<AtomicBool>,
    next_key: AtomicU64,
    pub(crate) limit: usize,
}

impl Link {
    /// Queues a command and wakes the driver thread.
    pub(crate) fn command(&self, cmd: Cmd) -> io::Result<()> {
        self.tx.send(cmd).map_err(|_| stopped())?;
        // Pairs with the fence between the driver thread's setting of `sleeping` and its last
        // look at the queue (`Thread::serve`): either that look finds this command, or this
        // swap finds the flag set and wakes the thread.
        fence(Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            match &self.waker {
                Wake::Ring(w) => w.wake(),
                Wake::Task(t) => t.wake(),
            }
        }
        Ok(())
    }
}

pub(crate) fn stopped() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the bufring-tokio driver thread has stopped",
    )
}

/// The owner of the driver thread: stops and joins it when the last `Uring` goes.
struct Owner {
    link: Arc<Link>,
    thread: Mutex<Option<(JoinHandle<()>, mpsc::Receiver<()>)>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.link.command(Cmd::Stop);
        let taken = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some((handle, done)) = taken {
            // `done` disconnects when the thread ends (after the driver is dropped), even if it
            // panicked; a thread that does not end in time is left detached.
            if let Err(mpsc::RecvTimeoutError::Disconnected) = done.recv_timeout(JOIN_BOUND) {
                let _ = handle.join();
            }
        }
    }
}

/// A handle to one driver (one io_uring, one shared buffer pool), on its thread or in a
/// [`LocalDriver`] task. Cheap to clone; the driver stops when the last clone is dropped. See
/// the [crate docs](crate).
#[derive(Clone)]
pub struct Uring {
    owner: Arc<Owner>,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("stream_limit", &self.owner.link.limit)
            .finish_non_exhaustive()
    }
}

/// A socket handed back by [`RecvStream::release`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Released {
    /// The socket, no longer the driver's: nothing of bufring's is in flight on it.
    pub fd: OwnedFd,
    /// What was received and not taken, in stream order (read the socket after these).
    pub unread: Vec<Chunk>,
}

/// Counters of a [`Uring`], from its driver.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UringStats {
    /// The driver's counters.
    pub driver: DriverStats,
    /// The stream pool's statistics.
    pub pool: PoolStats,
    /// The datagram pool's, once a [`datagram_socket`](Uring::datagram_socket) made it.
    pub datagram_pool: Option<PoolStats>,
    /// Bytes of the pool's buffers resident in RAM now (`Pool::resident_bytes`, by
    /// `mincore`): the receive memory, as opposed to the address space the pool reserves.
    /// `None` if `mincore` failed.
    pub resident_bytes: Option<u64>,
    /// Streams open.
    pub streams: usize,
    /// Bytes of stream queues copied to the heap because their task took nothing for
    /// [`Builder::idle_spill`].
    pub idle_spilled_bytes: u64,
}

impl Uring {
    /// A `Uring` with the default configuration.
    pub fn new() -> io::Result<Uring> {
        Builder::default().build()
    }

    /// Starts configuring a `Uring`.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Hands a connected socket to the driver, which starts receiving on it into the shared
    /// pool, and returns the stream of what arrives. Fails only when the socket cannot be taken
    /// (a tokio stream leaving its reactor) or the driver has stopped; either way the socket
    /// is closed, not given back. [`RecvStream::release`] gives it back later.
    pub fn recv_stream(&self, socket: impl IntoSocket) -> io::Result<RecvStream> {
        self.open(socket, false)
    }

    /// Hands the socket to the driver's side to receive on (from the datagram pool if
    /// `datagram`), as a stream of what arrives.
    fn open(&self, socket: impl IntoSocket, datagram: bool) -> io::Result<RecvStream> {
        let fd = socket.into_socket()?;
        let link = &self.owner.link;
        let key = link.next_key.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared::default());
        link.command(Cmd::Open {
            key,
            fd,
            shared: Arc::clone(&shared),
            datagram,
        })?;
        Ok(RecvStream::new(Arc::clone(link), key, shared))
    }

    /// Hands a datagram socket (UDP, or Unix datagram; bound, and connected if it is to use
    /// [`DatagramSocket::send`]) to the driver, which starts receiving on it into the datagram
    /// pool (made with the first one, see [`Builder::datagram_buffers`]). Fails like
    /// [`recv_stream`](Self::recv_stream); a pool the kernel refuses shows as the first item,
    /// an error.
    pub fn datagram_socket(&self, socket: impl IntoSocket) -> io::Result<DatagramSocket> {
        let msg = datagram::layout().map_err(core::to_io)?;
        Ok(DatagramSocket::new(self.open(socket, true)?, msg))
    }

    /// The driver's counters, the pool's statistics and resident bytes, and the stream count.
    pub async fn stats(&self) -> io::Result<UringStats> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.owner.link.command(Cmd::Stats { reply })?;
        rx.await.map_err(|_| stopped())
    }
}

// What the docs promise: the handle and the streams go anywhere tasks go.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn unpin<T: Unpin>() {}
    send_sync::<Uring>();
    send_sync::<RecvStream>();
    send_sync::<StreamSender>();
    send_sync::<BytesStream>();
    send_sync::<ChunkReader>();
    send_sync::<Released>();
    send_sync::<DatagramSocket>();
    send_sync::<Frames<LengthPrefixed>>();
    send_sync::<Frames<Delimited>>();
    unpin::<RecvStream>();
    unpin::<ChunkReader>();
    unpin::<DatagramSocket>();
};
