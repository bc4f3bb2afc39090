//! The driver thread: owns the `Driver`, takes commands from the streams, moves received chunks
//! into the streams' shared queues (up to the stream limit), answers sends, and stops on
//! `Stop` (or when the ring fails), ending every stream still open.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bufring::driver::{Driver, DriverWaker, Event, PoolId, Received, SocketId};
use bufring::{Chunk, Pool};
use tokio::sync::oneshot;

use crate::stream::{copy_err, not_connected, Shared};
use crate::{stopped, Builder, UringStats};

type Reply<T> = oneshot::Sender<io::Result<T>>;

/// What a task asks of the driver thread (each followed by a wake-up).
pub(crate) enum Cmd {
    /// Take the socket and receive on it into the stream's queue.
    Open {
        key: u64,
        fd: OwnedFd,
        shared: Arc<Shared>,
    },
    /// The task drained the stream's queue under half the limit: move more.
    Pull { key: u64 },
    /// Queue a chunk to send (its bytes already counted in the stream's `unsent`).
    Send { key: u64, chunk: Chunk },
    /// Shut the write side down after what is queued.
    Shutdown { key: u64, reply: Reply<()> },
    /// The stream was dropped: close the socket (once what was queued to send has gone).
    Close { key: u64 },
    /// Close the socket now with a reset.
    Reset { key: u64 },
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
}

struct Thread {
    driver: Driver,
    pool: PoolId,
    rx: mpsc::Receiver<Cmd>,
    /// Set here before sleeping in the ring; cleared by the command that wakes the thread.
    sleeping: Arc<AtomicBool>,
    limit: usize,
    streams: HashMap<u64, Entry>,
    by_sid: HashMap<SocketId, u64>,
    /// Streams whose queue was full at the last move (idle spill candidates).
    full: HashSet<u64>,
    idle_spill: Option<Duration>,
    max_wait: Option<Duration>,
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

/// The thread's body. `done` is dropped when it returns, after the driver: the `Uring`'s drop
/// waits for that.
pub(crate) fn run(
    cfg: Builder,
    rx: mpsc::Receiver<Cmd>,
    sleeping: Arc<AtomicBool>,
    init: mpsc::Sender<io::Result<DriverWaker>>,
    done: mpsc::Sender<()>,
) {
    let _done = done;
    let mut driver = match cfg.driver.clone().build() {
        Ok(d) => d,
        Err(e) => {
            let _ = init.send(Err(to_io(e)));
            return;
        }
    };
    let pool = Pool::builder(cfg.bgid)
        .count(cfg.buffers)
        .buf_len(cfg.buf_len)
        .incremental(cfg.incremental);
    let pool = match driver.add_pool(pool) {
        Ok(p) => p,
        Err(e) => {
            let _ = init.send(Err(to_io(e)));
            return;
        }
    };
    if init.send(Ok(driver.waker())).is_err() {
        return;
    }
    let mut t = Thread {
        driver,
        pool,
        rx,
        sleeping,
        limit: cfg.stream_limit,
        streams: HashMap::new(),
        by_sid: HashMap::new(),
        full: HashSet::new(),
        idle_spill: cfg.idle_spill,
        max_wait: cfg.max_wait,
        next_spill_check: Instant::now(),
        idle_spilled_bytes: 0,
    };
    // A panic in here must not leave tasks waiting for ever: end their streams, then drop the
    // driver (which cancels and waits for its requests) as usual.
    let end = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.serve())) {
        Ok(end) => end,
        Err(_) => io::Error::other("the bufring-tokio driver thread panicked"),
    };
    t.finish(end);
}

impl Thread {
    /// Runs until `Stop` (`stopped()`) or a ring failure (its error).
    fn serve(&mut self) -> io::Error {
        loop {
            if self.take_commands() {
                return stopped();
            }
            while let Some(ev) = self.driver.next_event() {
                self.event(ev);
            }
            let wait = match (self.spill_idle(), self.max_wait) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // Announce the sleep, then look at the queue once more: a command queued before
            // the fence is taken here; one queued after it finds `sleeping` set and wakes the
            // wait below (DriverWaker). Pairs with the fence in `Link::command`.
            self.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            match self.rx.try_recv() {
                Ok(Cmd::Stop) | Err(mpsc::TryRecvError::Disconnected) => return stopped(),
                Ok(cmd) => {
                    // Awake after all: a command queued meanwhile may have cleared the flag
                    // (and woken the ring, which then just returns at once).
                    self.sleeping.store(false, Ordering::SeqCst);
                    self.command(cmd);
                    // The driver must submit what the command queued: no sleep this round.
                    if let Err(e) = self.driver.run_once(Some(Duration::ZERO)) {
                        return to_io(e);
                    }
                    continue;
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let r = self.driver.run_once(wait);
            self.sleeping.store(false, Ordering::SeqCst);
            if let Err(e) = r {
                return to_io(e);
            }
        }
    }

    /// Takes every queued command; true on `Stop` (or when every `Uring` is gone).
    fn take_commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Cmd::Stop) | Err(mpsc::TryRecvError::Disconnected) => return true,
                Ok(cmd) => self.command(cmd),
                Err(mpsc::TryRecvError::Empty) => return false,
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Open { key, fd, shared } => {
                let sid = self.driver.socket(fd);
                if let Err(e) = self.driver.recv(sid, self.pool) {
                    shared.lock().abort(to_io(e));
                }
                self.by_sid.insert(sid, key);
                self.streams.insert(
                    key,
                    Entry {
                        sid,
                        shared,
                        sending: 0,
                    },
                );
            }
            Cmd::Pull { key } => self.pump(key),
            Cmd::Send { key, chunk } => {
                // A stream already closed: its senders were failed when it closed.
                let Some(e) = self.streams.get_mut(&key) else {
                    return;
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
            Cmd::Stats { reply } => {
                let _ = reply.send(UringStats {
                    driver: self.driver.stats(),
                    // The driver's only pool.
                    pool: self.driver.pool_stats().swap_remove(0),
                    streams: self.streams.len(),
                    idle_spilled_bytes: self.idle_spilled_bytes,
                });
            }
            Cmd::Stop => unreachable!("handled by serve"),
        }
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
                    e.sending = 0;
                    e.shared.lock().fail_sends(error);
                }
            }
            _ => {}
        }
    }

    /// Moves chunks from the driver's receive queue into the stream's while it holds less than
    /// the limit; past it the data stays with the driver, whose quota stops the receive.
    fn pump(&mut self, key: u64) {
        let Some(e) = self.streams.get(&key) else {
            return;
        };
        let mut st = e.shared.lock();
        let mut moved = false;
        while st.buffered < self.limit {
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
        st.want_pull = st.buffered >= self.limit && st.end.is_none();
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
    fn spill_idle(&mut self) -> Option<Duration> {
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
    fn finish(self, why: io::Error) {
        let Thread {
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
