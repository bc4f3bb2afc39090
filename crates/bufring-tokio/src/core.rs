//! The driver's side, whichever way it runs (its own thread, or a task in the runtime): owns
//! the `Driver`, takes commands from the streams, moves received chunks into the streams'
//! shared queues (up to the stream limit), accounts for sends, and at the end ends every
//! stream still open.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bufring::driver::{Driver, Event, PoolId, Received, SocketId};
use bufring::{Chunk, Incremental, Pool};
use tokio::sync::oneshot;

use crate::stream::{copy_err, not_connected, Shared};
use crate::{Builder, Released, UringStats};

/// How long handing a socket back may wait for its requests to end (they end at once unless
/// the kernel is slow to cancel).
const RELEASE_BOUND: Duration = Duration::from_secs(1);

type Reply<T> = oneshot::Sender<io::Result<T>>;

/// What a task asks of the driver thread (each followed by a wake-up).
pub(crate) enum Cmd {
    /// Take the socket and receive on it into the stream's queue (datagrams: from the
    /// datagram pool, one recvmsg message per chunk).
    Open {
        key: u64,
        fd: OwnedFd,
        shared: Arc<Shared>,
        datagram: bool,
    },
    /// The task drained the stream's queue under half the limit: move more.
    Pull { key: u64 },
    /// Queue a chunk to send (its bytes already counted in the stream's `unsent`).
    Send { key: u64, chunk: Chunk },
    /// Queue a chunk to send as a datagram to `to` (counted like `Send`).
    SendTo {
        key: u64,
        chunk: Chunk,
        to: SocketAddr,
    },
    /// Shut the write side down after what is queued.
    Shutdown { key: u64, reply: Reply<()> },
    /// The stream was dropped: close the socket (once what was queued to send has gone).
    Close { key: u64 },
    /// Close the socket now with a reset.
    Reset { key: u64 },
    /// Hand the socket back with what was received and not taken.
    Release { key: u64, reply: Reply<Released> },
    /// Bytes in the driver's receive queue for the stream.
    Queued { key: u64, reply: Reply<usize> },
    /// The counters.
    Stats { reply: oneshot::Sender<UringStats> },
    /// The last `Uring` was dropped.
    Stop,
}

struct Entry {
    sid: SocketId,
    shared: Arc<Shared>,
    /// Bytes handed to the driver to send since its last `Sent` (when they had all gone).
    sending: usize,
    /// A datagram socket: a failed send drops that datagram only.
    datagram: bool,
}

/// The maps' hasher: their keys are ids this crate and the driver hand out (counters, slots),
/// not input an attacker picks, so one multiply does instead of SipHash (which took a third of
/// the event routing's time).
type Ids = BuildHasherDefault<IdHasher>;

#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads consecutive ids over the high bits hashbrown uses.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub(crate) struct Core {
    pub(crate) driver: Driver,
    pool: PoolId,
    /// The pool of datagram sockets, made with the first one.
    dgram_pool: Option<PoolId>,
    /// Its buffers, their length and its buffer group id.
    dgram_cfg: (usize, usize, u16),
    rx: mpsc::Receiver<Cmd>,
    /// Set before sleeping (in the ring, or as a pending task); cleared by the command that
    /// wakes the driver's side.
    pub(crate) sleeping: Arc<AtomicBool>,
    limit: usize,
    streams: HashMap<u64, Entry, Ids>,
    by_sid: HashMap<SocketId, u64, Ids>,
    /// Streams whose queue was full at the last move (idle spill candidates).
    full: HashSet<u64, Ids>,
    idle_spill: Option<Duration>,
    pub(crate) max_wait: Option<Duration>,
    next_spill_check: Instant,
    idle_spilled_bytes: u64,
}

/// A bufring error as an `io::Error`, keeping the kernel's error kind.
pub(crate) fn to_io(e: bufring::Error) -> io::Error {
    let kind = match &e {
        bufring::Error::Kernel { source, .. } => source.kind(),
        bufring::Error::NotOpen { .. } => io::ErrorKind::NotConnected,
        bufring::Error::InvalidConfig { .. } => io::ErrorKind::InvalidInput,
        bufring::Error::Unsupported { .. } => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl Core {
    /// The driver with its pool, built on the calling thread (where it must stay).
    pub(crate) fn new(
        cfg: &Builder,
        rx: mpsc::Receiver<Cmd>,
        sleeping: Arc<AtomicBool>,
    ) -> io::Result<Core> {
        let mut driver = cfg.driver.clone().build().map_err(to_io)?;
        let pool = Pool::builder(cfg.bgid)
            .count(cfg.buffers)
            .buf_len(cfg.buf_len)
            .incremental(cfg.incremental);
        let pool = driver.add_pool(pool).map_err(to_io)?;
        // A buffer group id of its own, next to the stream pool's.
        let dgram_bgid = if cfg.bgid == u16::MAX {
            cfg.bgid - 1
        } else {
            cfg.bgid + 1
        };
        Ok(Core {
            driver,
            pool,
            dgram_pool: None,
            dgram_cfg: (cfg.datagram_buffers, cfg.datagram_buf_len, dgram_bgid),
            rx,
            sleeping,
            limit: cfg.stream_limit,
            streams: HashMap::default(),
            by_sid: HashMap::default(),
            full: HashSet::default(),
            idle_spill: cfg.idle_spill,
            max_wait: cfg.max_wait,
            next_spill_check: Instant::now(),
            idle_spilled_bytes: 0,
        })
    }

    /// Takes the events the driver has queued; how many there were.
    pub(crate) fn events(&mut self) -> usize {
        let mut n = 0;
        while let Some(ev) = self.driver.next_event() {
            self.event(ev);
            n += 1;
        }
        n
    }

    /// Announces a sleep, then looks at the queue once more: a command queued before the fence
    /// is taken here (`Some`: awake after all, `sleeping` cleared); one queued after it finds
    /// `sleeping` set and wakes the sleeper. Pairs with the fence in `Link::command`.
    pub(crate) fn about_to_sleep(&mut self) -> Option<Cmd> {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        match self.rx.try_recv() {
            Ok(cmd) => {
                // A command queued meanwhile may have cleared the flag and woken the sleeper
                // already (a spurious wake-up then, harmless).
                self.sleeping.store(false, Ordering::SeqCst);
                Some(cmd)
            }
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => {
                self.sleeping.store(false, Ordering::SeqCst);
                Some(Cmd::Stop)
            }
        }
    }

    /// Takes every queued command; true on `Stop` (or when every `Uring` is gone).
    pub(crate) fn take_commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(cmd) => {
                    if self.command(cmd) {
                        return true;
                    }
                }
                Err(mpsc::TryRecvError::Disconnected) => return true,
                Err(mpsc::TryRecvError::Empty) => return false,
            }
        }
    }

    /// Runs one command; true on `Stop`.
    pub(crate) fn command(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Open {
                key,
                fd,
                shared,
                datagram,
            } => {
                let sid = self.driver.socket(fd);
                let pool = if datagram {
                    self.datagram_pool()
                } else {
                    Ok(self.pool)
                };
                if let Err(e) = pool.and_then(|pool| self.driver.recv(sid, pool)) {
                    shared.lock().abort(to_io(e));
                }
                self.by_sid.insert(sid, key);
                self.streams.insert(
                    key,
                    Entry {
                        sid,
                        shared,
                        sending: 0,
                        datagram,
                    },
                );
            }
            Cmd::Pull { key } => self.pump(key),
            Cmd::Send { key, chunk } => {
                // A stream already closed: its senders were failed when it closed.
                let Some(e) = self.streams.get_mut(&key) else {
                    return false;
                };
                let len = chunk.len();
                match self.driver.send(e.sid, chunk) {
                    Ok(()) => e.sending += len,
                    Err(err) => {
                        let mut st = e.shared.lock();
                        st.fail_sends(to_io(err));
                        st.sent(len, self.limit);
                    }
                }
            }
            Cmd::SendTo { key, chunk, to } => {
                let Some(e) = self.streams.get_mut(&key) else {
                    return false;
                };
                let len = chunk.len();
                match self.driver.send_to(e.sid, chunk, to) {
                    Ok(()) => e.sending += len,
                    Err(err) => {
                        let mut st = e.shared.lock();
                        st.datagram_failed(to_io(err));
                        st.sent(len, self.limit);
                    }
                }
            }
            Cmd::Shutdown { key, reply } => {
                let r = match self.streams.get(&key) {
                    Some(e) => self.driver.shutdown(e.sid).map_err(to_io),
                    None => Err(not_connected()),
                };
                let _ = reply.send(r);
            }
            Cmd::Close { key } => self.close(key, false),
            Cmd::Reset { key } => self.close(key, true),
            Cmd::Queued { key, reply } => {
                let r = match self.streams.get(&key) {
                    Some(e) => self.driver.queued(e.sid).map_err(to_io),
                    None => Err(not_connected()),
                };
                let _ = reply.send(r);
            }
            Cmd::Release { key, reply } => {
                let _ = reply.send(self.release(key));
            }
            Cmd::Stats { reply } => {
                let pool = self.driver.pool(self.pool).ok();
                let mut pools = self.driver.pool_stats();
                let _ = reply.send(UringStats {
                    driver: self.driver.stats(),
                    // The stream pool came first, the datagram pool (if any) second.
                    datagram_pool: pools.get(1).copied(),
                    pool: pools.swap_remove(0),
                    resident_bytes: pool.and_then(|p| p.resident_bytes().ok()),
                    streams: self.streams.len(),
                    idle_spilled_bytes: self.idle_spilled_bytes,
                });
            }
            Cmd::Stop => return true,
        }
        false
    }

    /// Forgets the stream and closes its socket: once what was queued to send has gone, or
    /// now with a reset. The driver cancels the receive in flight and closes the fd when its
    /// requests have ended.
    fn close(&mut self, key: u64, reset: bool) {
        self.full.remove(&key);
        if let Some(e) = self.streams.remove(&key) {
            self.by_sid.remove(&e.sid);
            e.shared.lock().fail_sends(not_connected());
            let _ = if reset {
                self.driver.reset(e.sid)
            } else {
                self.driver.close(e.sid)
            };
        }
    }

    /// Takes the stream's socket out of the driver: stops its receive, runs the ring until
    /// that receive has had its last completion (bounded), gathers what arrived and was not
    /// taken (the stream's queue, then the driver's), and releases the fd (sends not yet made
    /// are dropped). The stream's senders fail from here on.
    fn release(&mut self, key: u64) -> io::Result<Released> {
        self.full.remove(&key);
        let e = self.streams.remove(&key).ok_or_else(not_connected)?;
        self.by_sid.remove(&e.sid);
        let mut st = e.shared.lock();
        st.fail_sends(not_connected());
        let mut unread: Vec<Chunk> = st.queue.drain(..).collect();
        st.buffered = 0;
        drop(st);
        let sid = e.sid;
        let deadline = Instant::now() + RELEASE_BOUND;
        self.driver.stop_recv(sid).map_err(to_io)?;
        while self.driver.recv_in_flight(sid).map_err(to_io)? {
            let now = Instant::now();
            if now >= deadline {
                // The driver closes the socket once its receive ends.
                let _ = self.driver.close(sid);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the socket's receive did not end in time; it will be closed",
                ));
            }
            self.driver
                .run_once(Some((deadline - now).min(Duration::from_millis(10))))
                .map_err(to_io)?;
        }
        while let Some(Received::Data(c)) = self.driver.read(sid).map_err(to_io)? {
            unread.push(c);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let fd = self
            .driver
            .release(sid, left.max(Duration::from_millis(10)))
            .map_err(to_io)?;
        Ok(Released { fd, unread })
    }

    fn event(&mut self, ev: Event) {
        let Some(sid) = ev.socket() else { return };
        let Some(&key) = self.by_sid.get(&sid) else {
            return;
        };
        match ev {
            Event::Readable { .. } => self.pump(key),
            Event::Sent { .. } => {
                if let Some(e) = self.streams.get_mut(&key) {
                    let sent = std::mem::take(&mut e.sending);
                    e.shared.lock().sent(sent, self.limit);
                }
            }
            Event::SendFailed { error, .. } => {
                if let Some(e) = self.streams.get_mut(&key) {
                    if e.datagram {
                        // That datagram is dropped, the rest still go: `Sent` follows.
                        e.shared.lock().datagram_failed(error);
                    } else {
                        e.sending = 0;
                        e.shared.lock().fail_sends(error);
                    }
                }
            }
            _ => {}
        }
    }

    /// The datagram pool, made now if this is the first datagram socket.
    fn datagram_pool(&mut self) -> bufring::Result<PoolId> {
        if let Some(p) = self.dgram_pool {
            return Ok(p);
        }
        let (count, len, bgid) = self.dgram_cfg;
        // Classic, on every kernel: an incremental ring needs `min_left` for recvmsg, which
        // not every kernel has (see `bufring::RecvMsg::check_pool`).
        let builder = Pool::builder(bgid)
            .count(count)
            .buf_len(len)
            .incremental(Incremental::Off);
        let p = self
            .driver
            .add_datagram_pool(builder, crate::datagram::layout()?)?;
        self.dgram_pool = Some(p);
        Ok(p)
    }

    /// Moves chunks from the driver's receive queue into the stream's while they fit in the
    /// limit (an empty queue takes one chunk of any length); the rest stays with the driver,
    /// whose quota stops the receive.
    fn pump(&mut self, key: u64) {
        let Some(e) = self.streams.get(&key) else {
            return;
        };
        let mut st = e.shared.lock();
        let mut moved = false;
        let mut full = false;
        loop {
            if st.buffered > 0 {
                match self.driver.peek_len(e.sid) {
                    Ok(Some(len)) if st.buffered + len > self.limit => {
                        full = true;
                        break;
                    }
                    _ => {}
                }
            }
            match self.driver.read(e.sid) {
                Ok(Some(Received::Data(c))) => {
                    st.buffered += c.len();
                    st.queue.push_back(c);
                    moved = true;
                }
                Ok(Some(Received::End)) => {
                    st.end = Some(Ok(()));
                    moved = true;
                    break;
                }
                Ok(Some(Received::Error(err))) => {
                    st.end = Some(Err(err));
                    moved = true;
                    break;
                }
                Ok(None) => break,
                Err(err) => {
                    st.abort(to_io(err));
                    break;
                }
            }
        }
        st.want_pull = (full || st.buffered >= self.limit) && st.end.is_none();
        if st.want_pull {
            if self.full.is_empty() {
                if let Some(d) = self.idle_spill {
                    self.next_spill_check = Instant::now() + d;
                }
            }
            self.full.insert(key);
        } else {
            self.full.remove(&key);
        }
        if moved {
            st.wake();
        }
    }

    /// Copies to the heap the queues of full streams whose task took nothing since the last
    /// check, so their pool buffers go back. Returns how long the driver may wait.
    pub(crate) fn spill_idle(&mut self) -> Option<Duration> {
        let every = self.idle_spill?;
        if self.full.is_empty() {
            return None;
        }
        let now = Instant::now();
        if now < self.next_spill_check {
            return Some(self.next_spill_check - now);
        }
        self.next_spill_check = now + every;
        let streams = &self.streams;
        let mut spilled = 0u64;
        self.full.retain(|key| {
            let Some(e) = streams.get(key) else {
                return false;
            };
            let mut st = e.shared.lock();
            if !st.want_pull {
                return false;
            }
            if !std::mem::take(&mut st.taken) {
                for c in st.queue.iter_mut().filter(|c| c.in_pool()) {
                    spilled += c.len() as u64;
                    *c = c.to_heap();
                }
            }
            true
        });
        self.idle_spilled_bytes += spilled;
        (!self.full.is_empty()).then_some(every)
    }

    /// Ends every stream still open with `why`, answers what waits, and drops the driver (which
    /// cancels its requests and waits for them).
    pub(crate) fn finish(self, why: io::Error) {
        let Core {
            driver,
            rx,
            streams,
            ..
        } = self;
        // Commands that came after `Stop` (none can open a stream: that needs a `Uring`).
        while let Ok(cmd) = rx.try_recv() {
            if let Cmd::Open { shared, .. } = cmd {
                shared.lock().abort(copy_err(&why));
            }
        }
        drop(rx);
        for (_, e) in streams {
            e.shared.lock().abort(copy_err(&why));
        }
        drop(driver);
    }
}
