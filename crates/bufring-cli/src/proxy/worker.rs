//! One worker thread: its own io_uring, its own pool, its own SO_REUSEPORT listener and the
//! connections it accepted. Everything a connection does is a request on this ring; the loop
//! reaps a batch of completions, acts on each, then publishes returned buffers once and
//! re-arms receives that were waiting for them.

use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bufring::{Completion, Cqe, Pool};
use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{opcode, squeue, IoUring};

use super::conn::{Batch, Conn, Recv, State, MAX_IOV};
use super::net::{self, RawAddr};
use super::{Config, Shared, ThreadStats, DRAIN, FORCE};

// user_data: kind << 48 | generation << 32 | connection slot.
const K_ACCEPT: u64 = 1;
const K_CONTROL: u64 = 2;
const K_CONNECT: u64 = 3;
const K_RECV: u64 = 4; // + direction
const K_SEND: u64 = 6; // + direction
/// A cancel that belongs to a connection (counted in its `inflight`).
const K_CANCEL: u64 = 8;
/// A cancel of the accept or control request (nothing to count).
const K_OTHER: u64 = 9;

/// Caps a multishot receive at `total` bytes (sqe->optlen, Linux 6.17): the kernel ends it,
/// without F_MORE, once that much has arrived. That is backpressure without a cancel racing
/// against a burst of completions. Older kernels refuse the SQE with EINVAL.
fn cap_multishot(e: squeue::Entry, total: u32) -> squeue::Entry {
    // The io-uring crate has no setter for optlen, so the field is written in place.
    // SAFETY: `Entry` is a repr(C) wrapper around the 64-byte io_uring_sqe, plain old data in
    // which every bit pattern is valid; bytes 44..48 are the optlen/file_index union, which a
    // socket receive does not otherwise use.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(e) };
    raw[44..48].copy_from_slice(&total.to_ne_bytes());
    // SAFETY: as above, any 64 bytes are a valid SQE value.
    unsafe { std::mem::transmute(raw) }
}

fn ud(kind: u64, idx: u32, gen: u16) -> u64 {
    kind << 48 | u64::from(gen) << 32 | u64::from(idx)
}

/// The ring: SQ entries, and CQ entries (generous: a CQ overflow ends multishot receives,
/// which then have to be re-armed).
const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 16384;

pub fn new_ring() -> io::Result<IoUring> {
    // One thread submits and reaps, so the kernel may defer task work to our wait calls.
    IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(SQ_ENTRIES)
        .or_else(|_| {
            IoUring::builder()
                .setup_cqsize(CQ_ENTRIES)
                .build(SQ_ENTRIES)
        })
}

pub struct Worker {
    // Field order is drop order: the pool (and its registration) goes before the ring.
    pool: Pool,
    ring: IoUring,
    id: usize,
    shared: Arc<Shared>,
    listener: Option<TcpListener>,
    accept_armed: bool,
    /// Accepting stopped for lack of file descriptors; resumed when a connection closes.
    accept_starved: bool,
    control_armed: bool,
    /// The eventfd counter lands here; boxed so its address stays put while a read is in flight.
    control_buf: Box<u64>,
    /// Boxed for the same reason: every connect request points at it.
    upstream: Box<RawAddr>,
    slots: Vec<Option<Conn>>,
    gens: Vec<u16>,
    free: Vec<u32>,
    /// Connections alive on this thread.
    live: usize,
    /// Receives that hit an empty ring, in the order they did: re-armed first come, first
    /// served when buffers come back, so none starves.
    waiting: VecDeque<(u32, u16, usize)>,
    max_connections: usize,
    max_unsent: usize,
    max_chunks: usize,
    /// The kernel honours a byte cap on multishot receives (found at the first refusal).
    mshot_cap: bool,
    /// Multishot bundle receives instead of plain multishot receives.
    bundles: bool,
    drain_timeout: Duration,
    draining: Option<Instant>,
    forced: bool,
    cqes: Vec<(u64, i32, u32)>,
    /// SQEs the kernel could not take yet (see `push`).
    backlog: VecDeque<squeue::Entry>,
    stats: ThreadStats,
}

impl Worker {
    pub fn new(
        id: usize,
        cfg: &Config,
        listener: TcpListener,
        shared: Arc<Shared>,
    ) -> Result<Worker, String> {
        let ring = new_ring().map_err(|e| format!("io_uring_setup: {e}"))?;
        let pool = Pool::builder(0)
            .count(cfg.buffers as usize)
            .buf_len(cfg.buf_size as usize)
            .incremental(cfg.incremental)
            .bundles(cfg.bundles)
            .build(&ring)
            .map_err(|e| format!("buffer pool: {e}"))?;
        let max_chunks = (cfg.buffers as usize / 4).clamp(2, MAX_IOV);
        Ok(Worker {
            pool,
            ring,
            id,
            shared,
            listener: Some(listener),
            accept_armed: false,
            accept_starved: false,
            control_armed: false,
            control_buf: Box::new(0),
            upstream: Box::new(RawAddr::new(cfg.upstream)),
            slots: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            live: 0,
            waiting: VecDeque::new(),
            max_connections: cfg.max_connections,
            max_unsent: cfg.max_unsent.max(1),
            max_chunks,
            mshot_cap: cfg.multishot_cap,
            bundles: cfg.bundles,
            drain_timeout: cfg.drain_timeout,
            draining: None,
            forced: false,
            cqes: Vec::with_capacity(CQ_ENTRIES as usize),
            backlog: VecDeque::new(),
            stats: ThreadStats::default(),
        })
    }

    /// Runs until a shutdown was asked for and every connection is gone.
    pub fn run(mut self) -> io::Result<()> {
        self.arm_accept();
        self.arm_control();
        self.check_control();
        self.publish_stats();
        loop {
            self.submit_and_wait()?;
            self.reap();
            self.after_batch();
            self.flush_backlog();
            if let Some(deadline) = self.draining {
                if !self.forced && Instant::now() >= deadline {
                    self.close_all();
                }
                if self.live == 0 && !self.accept_armed {
                    break;
                }
            }
        }
        self.stop_control()?;
        self.publish_stats();
        Ok(())
    }

    fn submit_and_wait(&mut self) -> io::Result<()> {
        let r = if self.draining.is_some() {
            // Wake up now and then to enforce the drain deadline.
            let ts = Timespec::new().nsec(50_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        } else {
            self.ring.submit_and_wait(1)
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
            Err(e) => Err(e),
        }
    }

    /// Queues an SQE, submitting first if the queue is full. If the kernel will not take
    /// submissions yet (EBUSY: completions wait in the overflow list), the SQE waits in
    /// `backlog`, and so does every later one, to keep their order; the loop moves them on
    /// after reaping. Handlers are never re-entered from here.
    ///
    /// # Safety
    /// Whatever the entry points at (pool, chunk, batch, address, control word) stays valid
    /// until its final completion.
    unsafe fn push(&mut self, e: &squeue::Entry) {
        if self.backlog.is_empty() {
            loop {
                // SAFETY: passed on from the caller.
                if unsafe { self.ring.submission().push(e) }.is_ok() {
                    return;
                }
                match self.ring.submit() {
                    Ok(_) => {}
                    Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
                    Err(err) if err.raw_os_error() == Some(libc::EBUSY) => break,
                    Err(err) => panic!("io_uring_enter failed with a full submission queue: {err}"),
                }
            }
        }
        self.backlog.push_back(e.clone());
    }

    /// Moves SQEs that waited in `backlog` into the submission queue, in order.
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

    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, res, flags) in &cqes {
            self.dispatch(data, res, flags);
        }
        cqes.clear();
        self.cqes = cqes;
    }

    fn dispatch(&mut self, data: u64, res: i32, flags: u32) {
        let kind = data >> 48;
        let idx = data as u32;
        match kind {
            K_ACCEPT => self.on_accept(res, flags),
            K_CONTROL => self.on_control(),
            K_OTHER => {}
            _ => {
                let gen = (data >> 32) as u16;
                debug_assert_eq!(self.gens[idx as usize], gen, "stale completion");
                match kind {
                    K_CONNECT => self.on_connect(idx, res),
                    K_RECV | 5 => self.on_recv(idx, (kind - K_RECV) as usize, res, flags),
                    K_SEND | 7 => self.on_send(idx, (kind - K_SEND) as usize, res),
                    K_CANCEL => {
                        self.conn(idx).inflight -= 1;
                        self.maybe_free(idx);
                    }
                    _ => unreachable!("unknown user_data {data:#x}"),
                }
            }
        }
    }

    /// Once per batch: give returned buffers back with one tail store, re-arm receives that
    /// waited for them, publish the counters.
    fn after_batch(&mut self) {
        self.pool.publish();
        if !self.waiting.is_empty() {
            let posted = self.pool.stats().in_kernel as usize;
            if posted > 0 {
                // Each posted buffer takes at least one receive (several on incremental rings).
                let mut budget = if self.pool.is_incremental() {
                    posted * 8
                } else {
                    posted
                };
                while budget > 0 {
                    let Some((idx, gen, d)) = self.waiting.pop_front() else {
                        break;
                    };
                    let valid = self.gens[idx as usize] == gen
                        && self.slots[idx as usize].as_ref().is_some_and(|c| {
                            c.state == State::Open && c.dirs[d].recv == Recv::Waiting
                        });
                    if !valid {
                        continue;
                    }
                    self.conn(idx).dirs[d].recv = Recv::Idle;
                    self.stats.enobufs_rearms += 1;
                    self.resume_recv(idx, d);
                    budget -= 1;
                }
            }
        }
        self.publish_stats();
    }

    /// Every connection's state, for diagnosing a stall (printed on SIGUSR1 with
    /// BUFRING_PROXY_DEBUG set).
    fn dump(&self) {
        for (i, c) in self.slots.iter().enumerate() {
            if let Some(c) = c {
                eprintln!(
                    "thread {} conn {i}: {:?} inflight {} | {}",
                    self.id,
                    c.state,
                    c.inflight,
                    c.dirs
                        .iter()
                        .map(|d| format!(
                            "recv {:?} throttled {} eof {} shut {} queued {}/{} sending {}",
                            d.recv,
                            d.throttled,
                            d.eof,
                            d.shut,
                            d.queued,
                            d.queue.len(),
                            d.sending
                        ))
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
            }
        }
        eprintln!(
            "thread {}: waiting {:?}, pool {:?}",
            self.id,
            self.waiting,
            self.pool.stats()
        );
    }

    fn publish_stats(&mut self) {
        self.stats.active = self.live as u64;
        self.stats.pool = self.pool.stats();
        self.stats.waiting = self.waiting.len() as u64;
        self.stats.multishot_cap = u64::from(self.mshot_cap);
        if let Ok(mut s) = self.shared.stats[self.id].lock() {
            *s = self.stats;
        }
    }

    fn conn(&mut self, idx: u32) -> &mut Conn {
        self.slots[idx as usize]
            .as_mut()
            .expect("completion for a free slot")
    }

    // ---- accept and control -------------------------------------------------------------

    fn arm_accept(&mut self) {
        let Some(l) = &self.listener else { return };
        let e = opcode::AcceptMulti::new(Fd(l.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud(K_ACCEPT, 0, 0));
        self.accept_armed = true;
        // SAFETY: the listener is closed only after the accept's final completion.
        unsafe { self.push(&e) };
    }

    fn on_accept(&mut self, res: i32, flags: u32) {
        let more = Cqe::new(res, flags).more();
        if !more {
            self.accept_armed = false;
        }
        if res >= 0 {
            self.new_conn(res);
        } else if matches!(
            -res,
            libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS
        ) {
            self.stats.accept_errors += 1;
            if !more && self.live > 0 {
                self.accept_starved = true;
            }
        } else if res != -libc::ECANCELED {
            self.stats.accept_errors += 1;
        }
        if !self.accept_armed {
            if self.draining.is_some() {
                self.listener = None;
            } else if !self.accept_starved {
                self.arm_accept();
            }
        }
    }

    fn arm_control(&mut self) {
        let buf: *mut u64 = &mut *self.control_buf;
        let e = opcode::Read::new(Fd(self.shared.wakers[self.id].as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(ud(K_CONTROL, 0, 0));
        self.control_armed = true;
        // SAFETY: `control_buf` is boxed and lives until the read's completion (see
        // `stop_control`), and the eventfd lives in `shared`, which we hold.
        unsafe { self.push(&e) };
    }

    fn on_control(&mut self) {
        self.control_armed = false;
        self.check_control();
        if !self.forced || self.live > 0 {
            self.arm_control();
        }
    }

    fn check_control(&mut self) {
        if self.shared.dump[self.id].swap(false, Ordering::AcqRel) {
            self.dump();
        }
        let state = self.shared.state.load(Ordering::Acquire);
        if state >= DRAIN && self.draining.is_none() {
            self.draining = Some(Instant::now() + self.drain_timeout);
            if self.accept_armed {
                let e = opcode::AsyncCancel2::new(CancelBuilder::user_data(ud(K_ACCEPT, 0, 0)))
                    .build()
                    .user_data(ud(K_OTHER, 0, 0));
                // SAFETY: a cancel points at nothing.
                unsafe { self.push(&e) };
            } else {
                self.listener = None;
            }
        }
        if state >= FORCE && !self.forced {
            self.close_all();
        }
    }

    /// Cancels the control read and waits (bounded) for its completion, so its buffer can go.
    fn stop_control(&mut self) -> io::Result<()> {
        if !self.control_armed {
            return Ok(());
        }
        let e = opcode::AsyncCancel2::new(CancelBuilder::user_data(ud(K_CONTROL, 0, 0)))
            .build()
            .user_data(ud(K_OTHER, 0, 0));
        // SAFETY: a cancel points at nothing.
        unsafe { self.push(&e) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.control_armed && Instant::now() < deadline {
            self.submit_and_wait()?;
            let cqes: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            if cqes.contains(&ud(K_CONTROL, 0, 0)) {
                self.control_armed = false;
            }
        }
        if self.control_armed {
            // Never free memory the kernel may still write: leak the word instead.
            std::mem::forget(std::mem::take(&mut self.control_buf));
        }
        Ok(())
    }

    fn close_all(&mut self) {
        self.forced = true;
        for idx in 0..self.slots.len() as u32 {
            if self.slots[idx as usize]
                .as_ref()
                .is_some_and(|c| c.state != State::Closing)
            {
                self.teardown(idx, false);
            }
        }
    }

    // ---- connections --------------------------------------------------------------------

    fn new_conn(&mut self, client: RawFd) {
        if self.draining.is_some() {
            net::close(client);
            return;
        }
        if self.shared.active.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.shared.active.fetch_sub(1, Ordering::AcqRel);
            self.stats.refused_limit += 1;
            net::close(client);
            return;
        }
        self.stats.accepted += 1;
        let _ = net::set_nodelay(client);
        let upstream = match net::tcp_socket(self.upstream.family()) {
            Ok(s) => s.into_raw_fd(),
            Err(_) => {
                self.shared.active.fetch_sub(1, Ordering::AcqRel);
                self.stats.upstream_failed += 1;
                net::close(client);
                return;
            }
        };
        let _ = net::set_nodelay(upstream);
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.gens.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        let gen = self.gens[idx as usize];
        let mut conn = Conn::new(client, upstream, gen);
        conn.inflight = 1;
        self.slots[idx as usize] = Some(conn);
        self.live += 1;
        let e = opcode::Connect::new(Fd(upstream), self.upstream.as_ptr(), self.upstream.len)
            .build()
            .user_data(ud(K_CONNECT, idx, gen));
        // SAFETY: the address is boxed and lives as long as the worker, which outlives every
        // connection.
        unsafe { self.push(&e) };
    }

    fn on_connect(&mut self, idx: u32, res: i32) {
        let conn = self.conn(idx);
        conn.inflight -= 1;
        if conn.state == State::Closing {
            self.maybe_free(idx);
        } else if res < 0 {
            self.stats.upstream_failed += 1;
            self.teardown(idx, false);
        } else {
            conn.state = State::Open;
            self.arm_recv(idx, 0);
            self.arm_recv(idx, 1);
        }
    }

    fn arm_recv(&mut self, idx: u32, d: usize) {
        let conn = self.slots[idx as usize].as_mut().expect("live connection");
        conn.dirs[d].recv = Recv::Armed;
        conn.inflight += 1;
        let room = self
            .max_unsent
            .saturating_sub(conn.dirs[d].queued)
            .clamp(1, u32::MAX as usize);
        let e = if conn.dirs[d].throttled {
            self.pool.recv(conn.src(d))
        } else if self.mshot_cap && self.bundles {
            // The cap bounds bundles too (on 6.18 no bundle completion goes past it).
            let e = self.pool.recv_multishot_bundle(conn.src(d));
            cap_multishot(e, room as u32)
        } else if self.mshot_cap {
            cap_multishot(self.pool.recv_multishot(conn.src(d)), room as u32)
        } else {
            // Without the cap, bundles stay off: a bundle completion can take hundreds of
            // buffers before a cancel lands (the kernel appends what else is queued in the
            // socket, whatever sqe->len says), so the cancel path receives plainly.
            self.pool.recv_multishot(conn.src(d))
        };
        let e = e.user_data(ud(K_RECV + d as u64, idx, conn.gen));
        // SAFETY: the pool lives as long as the worker, which runs until every connection's
        // requests have completed.
        unsafe { self.push(&e) };
    }

    /// Arms direction `d`'s receive again if it is idle and its queue leaves room.
    fn resume_recv(&mut self, idx: u32, d: usize) {
        let (max_unsent, max_chunks) = (self.max_unsent, self.max_chunks);
        let conn = self.conn(idx);
        let dir = &conn.dirs[d];
        if conn.state == State::Open
            && !dir.eof
            && dir.recv == Recv::Idle
            && dir.queued <= max_unsent / 2
            && dir.queue.len() <= max_chunks / 2
        {
            self.arm_recv(idx, d);
        }
    }

    fn on_recv(&mut self, idx: u32, d: usize, res: i32, flags: u32) {
        let more = Cqe::new(res, flags).more();
        // SAFETY: every receive on this ring selects from this worker's pool, and `on_recv`
        // gets each receive CQE once (routed by user_data).
        let completion = unsafe { self.pool.complete(Cqe::new(res, flags)) };
        let (max_unsent, max_chunks, mshot_cap) =
            (self.max_unsent, self.max_chunks, self.mshot_cap);
        let conn = self.conn(idx);
        let gen = conn.gen;
        if !more {
            conn.inflight -= 1;
            if matches!(conn.dirs[d].recv, Recv::Armed | Recv::Cancelling) {
                conn.dirs[d].recv = Recv::Idle;
            }
        }
        if conn.state == State::Closing {
            drop(completion);
            self.maybe_free(idx);
            return;
        }
        let dir = &mut conn.dirs[d];
        match completion {
            Err(e) => {
                eprintln!("bufring proxy: completion rejected, closing the connection: {e}");
                self.teardown(idx, true);
            }
            Ok(Completion::Data { chunks, .. }) => {
                // Every chunk of a bundle is queued in order and goes out with the others.
                let (mut n, mut pieces) = (0, 0u64);
                for chunk in chunks {
                    n += chunk.len();
                    pieces += 1;
                    dir.queue.push_back(chunk);
                }
                dir.queued += n;
                let (queued, sending) = (dir.queued, dir.sending);
                let over = queued >= max_unsent || dir.queue.len() >= max_chunks;
                if over && !mshot_cap {
                    // Without the kernel's byte cap, a burst can overshoot before the cancel
                    // lands: go on one buffer at a time until the queue is empty again.
                    dir.throttled = true;
                }
                if d == 0 {
                    self.stats.bytes_up += n as u64;
                } else {
                    self.stats.bytes_down += n as u64;
                }
                self.stats.peak_unsent = self.stats.peak_unsent.max(queued as u64);
                if pieces > 1 {
                    self.stats.multi_buffer_bundles += 1;
                    self.stats.max_bundle_buffers = self.stats.max_bundle_buffers.max(pieces);
                }
                if !sending {
                    self.start_send(idx, d);
                }
                let conn = self.conn(idx);
                if more && over && conn.dirs[d].recv == Recv::Armed {
                    // Backpressure: the destination is slower than the source. Stop this
                    // receive; the send completions re-arm it once the queue has drained.
                    conn.dirs[d].recv = Recv::Cancelling;
                    conn.inflight += 1;
                    let target = ud(K_RECV + d as u64, idx, gen);
                    let e = opcode::AsyncCancel2::new(CancelBuilder::user_data(target))
                        .build()
                        .user_data(ud(K_CANCEL, idx, gen));
                    self.stats.backpressure_pauses += 1;
                    // SAFETY: a cancel points at nothing.
                    unsafe { self.push(&e) };
                } else if !more {
                    if queued > max_unsent / 2 || conn.dirs[d].queue.len() > max_chunks / 2 {
                        // The multishot ended at its byte cap with the queue still full: it
                        // stays off until the sends have drained the queue.
                        self.stats.backpressure_pauses += 1;
                    }
                    self.resume_recv(idx, d);
                }
            }
            Ok(Completion::EndOfStream) => {
                dir.eof = true;
                if dir.queue.is_empty() && !dir.sending {
                    self.shut(idx, d);
                }
            }
            Ok(Completion::NoBuffers) => {
                dir.recv = Recv::Waiting;
                self.waiting.push_back((idx, gen, d));
            }
            Ok(Completion::Failed(e)) => {
                if e.raw_os_error() == Some(libc::EINVAL) && self.mshot_cap {
                    // This kernel has no multishot byte cap: cancel-based backpressure instead.
                    self.mshot_cap = false;
                    self.resume_recv(idx, d);
                } else if e.raw_os_error() == Some(libc::ECANCELED) {
                    self.resume_recv(idx, d);
                } else {
                    if std::env::var_os("BUFRING_PROXY_DEBUG").is_some() {
                        eprintln!("conn {idx} dir {d}: receive failed: {e}");
                    }
                    self.stats.resets += 1;
                    self.teardown(idx, true);
                }
            }
        }
    }

    /// Sends the front of direction `d`'s queue straight from the chunks: one `send` for one
    /// chunk, one `sendmsg` over up to MAX_IOV chunks when more have piled up.
    fn start_send(&mut self, idx: u32, d: usize) {
        let conn = self.slots[idx as usize].as_mut().expect("live connection");
        let fd = conn.dst(d);
        let gen = conn.gen;
        let dir = &mut conn.dirs[d];
        let e = if dir.queue.len() == 1 {
            let c = &dir.queue[0];
            opcode::Send::new(Fd(fd), c.as_ptr(), c.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            let batch = dir.batch.get_or_insert_with(|| {
                // SAFETY: msghdr and iovec are plain old data; all-zero (null pointers, zero
                // lengths) is a valid value.
                Box::new(unsafe { std::mem::zeroed::<Batch>() })
            });
            let n = dir.queue.len().min(MAX_IOV);
            for (iov, c) in batch.iov.iter_mut().zip(dir.queue.iter()) {
                iov.iov_base = c.as_ptr() as *mut libc::c_void;
                iov.iov_len = c.len();
            }
            batch.msg.msg_iov = batch.iov.as_mut_ptr();
            batch.msg.msg_iovlen = n;
            opcode::SendMsg::new(Fd(fd), &batch.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        };
        dir.sending = true;
        conn.inflight += 1;
        let e = e.user_data(ud(K_SEND + d as u64, idx, gen));
        // SAFETY: the chunks stay in the queue, and the boxed batch in the connection, until
        // this send completes (teardown keeps a queue whose send is in flight, and the slot is
        // freed only when nothing is in flight).
        unsafe { self.push(&e) };
    }

    fn on_send(&mut self, idx: u32, d: usize, res: i32) {
        let conn = self.conn(idx);
        conn.inflight -= 1;
        let dir = &mut conn.dirs[d];
        dir.sending = false;
        if conn.state == State::Closing {
            dir.queue.clear();
            dir.queued = 0;
            self.maybe_free(idx);
            return;
        }
        if res <= 0 {
            if std::env::var_os("BUFRING_PROXY_DEBUG").is_some() {
                eprintln!("conn {idx} dir {d}: send failed: {res}");
            }
            self.stats.resets += 1;
            self.teardown(idx, true);
            return;
        }
        dir.consume(res as usize);
        if dir.queue.is_empty() {
            dir.throttled = false;
        }
        if !dir.queue.is_empty() {
            self.start_send(idx, d);
        } else if dir.eof {
            self.shut(idx, d);
            return;
        }
        self.resume_recv(idx, d);
    }

    /// Direction `d` is finished: pass the half-close on; when both are, close the pair.
    fn shut(&mut self, idx: u32, d: usize) {
        let conn = self.conn(idx);
        conn.dirs[d].shut = true;
        net::shutdown_write(conn.dst(d));
        if conn.dirs[1 - d].shut {
            self.teardown(idx, false);
        }
    }

    /// Closes the pair: cancels what is in flight on both sockets and frees the slot once
    /// nothing is. `reset` passes a reset on (SO_LINGER 0) instead of a clean close.
    fn teardown(&mut self, idx: u32, reset: bool) {
        let conn = self.conn(idx);
        if conn.state == State::Closing {
            return;
        }
        conn.state = State::Closing;
        let gen = conn.gen;
        if reset {
            for fd in conn.fds {
                net::set_linger_zero(fd);
            }
        }
        for dir in &mut conn.dirs {
            if !dir.sending {
                dir.queue.clear();
                dir.queued = 0;
            }
            if dir.recv == Recv::Waiting {
                dir.recv = Recv::Idle;
            }
        }
        if conn.inflight > 0 {
            let fds = conn.fds;
            conn.inflight += 2;
            for fd in fds {
                let e = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
                    .build()
                    .user_data(ud(K_CANCEL, idx, gen));
                // SAFETY: a cancel points at nothing.
                unsafe { self.push(&e) };
            }
        }
        self.maybe_free(idx);
    }

    fn maybe_free(&mut self, idx: u32) {
        let conn = self.conn(idx);
        if conn.state != State::Closing || conn.inflight > 0 {
            return;
        }
        for fd in conn.fds {
            net::close(fd);
        }
        self.slots[idx as usize] = None;
        self.gens[idx as usize] = self.gens[idx as usize].wrapping_add(1);
        self.free.push(idx);
        self.live -= 1;
        self.stats.closed += 1;
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
        if self.accept_starved && self.draining.is_none() {
            self.accept_starved = false;
            self.arm_accept();
        }
    }
}
