//! Running the ring: waiting, submitting (with a backlog when the kernel is busy), reaping and
//! routing every completion by user_data, timers, the eventfds, and the drop that waits for
//! every request.

use super::*;

/// io_uring_enter's flag that makes it run deferred task work and reap (uapi io_uring.h).
const IORING_ENTER_GETEVENTS: u32 = 1;

impl Driver {
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

    /// Submits what is queued, waits for at least one completion (at most `timeout`, if given;
    /// not at all if events are waiting), handles every completion there is, and applies the
    /// buffer policy. Then take the events with [`next_event`](Self::next_event).
    pub fn run_once(&mut self, timeout: Option<Duration>) -> Result<()> {
        // A zero timeout is the earliest deadline there is: no clock read for it.
        let wait = if self.events.is_empty() && timeout != Some(Duration::ZERO) {
            self.deadline(timeout)
        } else {
            Some(Duration::ZERO)
        };
        self.submit(wait)?;
        self.reap_and_settle();
        Ok(())
    }

    /// [`run_once`](Self::run_once) without waiting: what a runtime calls when the
    /// [readiness fd](Self::readiness_fd) (or the [wake-up fd](Self::wake_fd)) is readable.
    ///
    /// It takes one batch of the kernel's work (with deferred task work, the kernel runs at
    /// most 20 of its deferred items per enter), so that the runtime's tasks can take the
    /// events and give their buffers back before the next batch is received into the pool.
    /// If more may wait, it signals the readiness fd itself, so a runtime that polls only when
    /// the fd is readable comes back for it. [`poll_batch`](Self::poll_batch) is the same
    /// without that signal, for a caller that loops on its own.
    ///
    /// On a ring with deferred task work (the default) the kernel's signals of the readiness fd
    /// are turned off while this runs (IORING_CQ_EVENTFD_DISABLED): the completions the steps
    /// themselves cause (a send made inline, say) would otherwise each signal the fd and wake
    /// the runtime's reactor and then the driver's task for nothing. They are turned on again
    /// before the last look at the rings, so work that comes after it signals the fd.
    pub fn poll(&mut self) -> Result<()> {
        if self.poll_batch()? {
            self.signal_readiness();
        }
        Ok(())
    }

    /// [`poll`](Self::poll) without signalling the readiness fd for what it leaves: true if
    /// more work may wait (call it again, after the events), false if the kernel had nothing
    /// more (the readiness fd signals new work).
    ///
    /// "May": the kernel does not show whether deferred items are left after an enter (it
    /// clears IORING_SQ_TASKRUN before it runs them and keeps the rest unflagged), so a step
    /// that brought completions counts as "more". A step that brings none after running 20
    /// deferred items that completed nothing would hide the rest until the next signal.
    pub fn poll_batch(&mut self) -> Result<bool> {
        // With deferred task work every completion is posted by this thread inside an enter;
        // other threads only add task work, and the first addition to an empty list raises
        // IORING_SQ_TASKRUN, then reads whether signals are off. This side turns signals on,
        // fences, then reads the flag. Both sides write, fence, read (on x86-64 the kernel's
        // `lock or` is a full fence), so either the last look sees the flag or the kernel
        // sees signals on: no wake-up is lost. Elsewhere the kernel's `atomic_or` is not a
        // fence, and without deferred task work other contexts post completions with no
        // fence before the read: there the signals stay on.
        let quiet = cfg!(target_arch = "x86_64") && self.ready.is_some() && self.deferred;
        if quiet {
            self.ring.completion().disable_eventfd();
            // The count signalled while the driver slept; no signal comes until the turn-on.
            self.clear_readiness();
        }
        let r = self.poll_steps(quiet);
        if r.is_err() {
            // A runtime must go on hearing of work whatever happened here.
            self.ring.completion().enable_eventfd();
        }
        r
    }

    /// Non-blocking steps until one brings events (true: more may wait), or a last look after
    /// a step that reaped nothing finds no completion, no deferred work and no overflow
    /// (false). `quiet`: the readiness signals are off, and turned on for the last look.
    fn poll_steps(&mut self, quiet: bool) -> Result<bool> {
        // Steps that reap completions but make no events (the driver's own requests) go round
        // again, a few times at most.
        for _ in 0..8 {
            let before = self.stats.completions;
            self.run_once(Some(Duration::ZERO))?;
            let reaped = self.stats.completions != before;
            if self.ready.is_none() {
                return Ok(reaped || !self.events.is_empty());
            }
            if quiet {
                self.ring.completion().enable_eventfd();
                fence(Ordering::SeqCst);
            } else {
                // Clear the readiness (some kernels signal it for every completion posted,
                // ours included), then look again: work that came before the read is seen
                // here, work that comes after signals the fd anew.
                self.clear_readiness();
            }
            // Completions parked in the kernel's overflow list (a full completion queue)
            // signal nothing more: they come out at the next enter (`submit` asks for them
            // when the flag is up), so go round again while it is.
            let (taskrun, overflow) = {
                let sq = self.ring.submission();
                (sq.taskrun(), sq.cq_overflow())
            };
            if !reaped && self.ring.completion().is_empty() && !taskrun && !overflow {
                return Ok(false);
            }
            if !self.events.is_empty() {
                return Ok(true);
            }
            if quiet {
                self.ring.completion().disable_eventfd();
            }
        }
        if quiet {
            self.ring.completion().enable_eventfd();
        }
        Ok(true)
    }

    /// Makes the readiness eventfd readable (work is left for the next `poll`).
    fn signal_readiness(&self) {
        if let Some(fd) = &self.ready {
            let one = 1u64;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
            unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Takes the readiness eventfd's count (it reads readable again at the next signal).
    fn clear_readiness(&self) {
        if let Some(fd) = &self.ready {
            let mut word = 0u64;
            // SAFETY: reads at most 8 bytes into a live u64 from an eventfd we own.
            unsafe { libc::read(fd.as_raw_fd(), (&mut word as *mut u64).cast(), 8) };
        }
    }

    /// An fd that polls readable whenever the driver has work (completions, deferred task
    /// work, a [wake-up](DriverWaker)): register it with a runtime's reactor (level or edge
    /// triggered), and call [`poll`](Self::poll) when it is readable. An eventfd registered with
    /// the ring (IORING_REGISTER_EVENTFD), made on the first call. Unlike the ring's own fd, it
    /// also signals work deferred by IORING_SETUP_DEFER_TASKRUN, which the kernel runs only when
    /// the driver enters the ring.
    ///
    /// Where the kernel does not wake a thread polling that eventfd when data arrives for a
    /// receive (kernels before 6.13, and any where a trial on a scratch ring set up like this
    /// driver's fails), this fails with
    /// [`Error::Unsupported`] ([`Feature::DeferredEventfd`](crate::Feature::DeferredEventfd)):
    /// 6.12 does not, with or without deferred task work, nor 6.1 with it; 6.18 does. There,
    /// drive the driver from a thread of its own blocked in [`run_once`](Self::run_once), as
    /// `bufring-tokio` does by default. (A ring from [`DriverBuilder::ring_builder`] is not
    /// checked.) Watch the [wake-up fd](Self::wake_fd) too.
    pub fn readiness_fd(&mut self) -> Result<BorrowedFd<'_>> {
        if self.ready.is_none() {
            if !self.custom_ring && !crate::probe::receive_signals_eventfd(self.deferred) {
                return Err(Error::Unsupported {
                    feature: crate::Feature::DeferredEventfd,
                });
            }
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

    /// The eventfd that wake-ups write: [`DriverWaker::wake`], and a chunk dropped while
    /// receives wait for buffers. The ring reads it (that is how [`run_once`](Self::run_once)
    /// wakes up); a runtime driving the driver through [`poll`](Self::poll) should watch it for
    /// readability (edge triggered; do not read it) beside the
    /// [readiness fd](Self::readiness_fd), because the kernel may not signal the readiness fd
    /// for the completion of that read: 6.18.44 signals a ring's registered eventfd for a
    /// completion caused by a write to another eventfd (a signal it defers) only the first time
    /// in the ring's life, so a driver watched through the readiness fd alone misses every
    /// later wake-up (measured: bufring-tokio's in-runtime mode stalled with its pool dry).
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.notify.as_fd()
    }

    /// How long a runtime that drives this driver through [`poll`](Self::poll) may leave it
    /// alone when the [readiness fd](Self::readiness_fd) stays quiet: the driver's own
    /// deadlines (idle checks, the elastic window, an accept retry, the spill grace period)
    /// need a `poll` by then. `None`: no deadline. [`run_once`](Self::run_once) applies them
    /// itself.
    pub fn next_timeout(&self) -> Option<Duration> {
        self.deadline(None)
    }

    /// The next event, if any.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// How long the next wait may last: the caller's timeout, cut short by the driver's own
    /// deadlines (idle checks, the elastic window, an accept retry).
    pub(super) fn deadline(&self, timeout: Option<Duration>) -> Option<Duration> {
        let now = Instant::now();
        let mut at: Option<Instant> = timeout.map(|t| now + t);
        let mut cut = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if let Some(t) = self.next_idle_check {
            cut(t);
        }
        if let Some(t) = self.accept_retry {
            cut(t);
        }
        for p in &self.pools {
            if let Some(t) = p.dry_since {
                cut(t + self.cfg.spill_after);
            }
        }
        if self
            .pools
            .iter()
            .any(|p| p.elastic.target > p.elastic.min || p.pool.parked() > 0)
        {
            cut(self.window_start + self.cfg.window);
        }
        at.map(|a| a.saturating_duration_since(now))
    }

    pub(super) fn submit(&mut self, wait: Option<Duration>) -> Result<()> {
        if let Some(e) = self.submit_error.take() {
            return Err(Error::kernel("io_uring_enter", e));
        }
        self.flush_backlog();
        self.stats.enters += 1;
        let want = usize::from(wait != Some(Duration::ZERO));
        let r = match wait {
            Some(t) if want == 1 => {
                let ts = Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            // An enter without GETEVENTS runs no deferred task work, and the kernel keeps what
            // one enter left of it unflagged: so ask for events (none awaited) every time.
            Some(_) if self.deferred => {
                let len = self.ring.submission().len() as u32;
                // SAFETY: no argument pointer; the flags ask for no wait and no timeout.
                unsafe {
                    self.ring.submitter().enter::<libc::sigset_t>(
                        len,
                        0,
                        IORING_ENTER_GETEVENTS,
                        None,
                    )
                }
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
    pub(super) unsafe fn push(&mut self, e: squeue::Entry) {
        if self.backlog.is_empty() {
            loop {
                // SAFETY: passed on from the caller.
                if unsafe { self.ring.submission().push(&e) }.is_ok() {
                    return;
                }
                self.stats.enters += 1;
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

    pub(super) fn flush_backlog(&mut self) {
        while let Some(e) = self.backlog.front() {
            // SAFETY: the entry was vouched for when it was pushed (see `push`).
            if unsafe { self.ring.submission().push(e) }.is_err() {
                self.stats.enters += 1;
                if self.ring.submit().is_err() {
                    return;
                }
                continue;
            }
            self.backlog.pop_front();
        }
    }

    pub(super) fn reap_and_settle(&mut self) {
        // One clock read per batch: what the completions' handlers and the policy call "now".
        self.now = Instant::now();
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

    pub(super) fn dispatch(&mut self, ud: u64, res: i32, flags: u32) {
        let more = Cqe::new(res, flags).more();
        if let Some(r) = parse_recv(ud) {
            match self.receive_named(r, ud) {
                Some(pool) => {
                    let how = (r.multishot, r.limited);
                    self.on_recv(ud, r.sock, pool, how, Cqe::new(res, flags));
                }
                None => self.stats.stray += 1,
            }
            return;
        }
        let Some(op) = self.ops.get(ud) else {
            self.stats.stray += 1;
            return;
        };
        match *op {
            Op::Accept { listener } => self.on_accept(ud, listener as usize, res, more),
            Op::Send { sock } => {
                self.ops.remove(ud);
                self.on_send(sock, res);
            }
            Op::Watch { sock } => {
                self.ops.remove(ud);
                self.on_watch(sock, res);
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
            Op::TimerRemove | Op::Provide => {
                self.ops.remove(ud);
            }
            Op::RemoveBuffers { pool } => {
                self.ops.remove(ud);
                self.pools[pool].pool.buffers_removed(res);
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

    pub(super) fn arm_wake(&mut self) {
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
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Cancel everything and wait (bounded) for the last completions, so that no memory the
        // kernel may still use is freed.
        let receives = self
            .sockets
            .iter()
            .filter_map(|slot| slot.sock.as_ref()?.recv_op);
        let live: Vec<u64> = self
            .ops
            .user_data()
            .chain(receives.map(std::num::NonZeroU64::get))
            .collect();
        for ud in live {
            let e = opcode::AsyncCancel::new(ud).build();
            // Cancels carry user_data 0, which names nothing (op generations start at 1, and
            // a receive's has its top bit set).
            // SAFETY: a cancel points at nothing.
            unsafe { self.push(e.user_data(0)) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.in_flight() > 0 && Instant::now() < deadline {
            if self.submit(Some(Duration::from_millis(50))).is_err() {
                break;
            }
            let cqes: Vec<(u64, bool)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), Cqe::new(c.result(), c.flags()).more()))
                .collect();
            for (ud, more) in cqes {
                if more {
                    continue;
                }
                match parse_recv(ud) {
                    Some(r) => {
                        // The last completion of a receive in flight (not a stray one).
                        if self.receive_named(r, ud).is_some() {
                            self.at(r.sock).recv_op = None;
                            self.recvs -= 1;
                        }
                    }
                    None => {
                        self.ops.remove(ud);
                    }
                }
            }
            self.flush_backlog();
        }
        // Legacy pools: take back what the kernel holds, so that their memory can go.
        if self.in_flight() == 0 {
            for pi in 0..self.pools.len() {
                if let Some(e) = self.pools[pi].pool.remove_buffers() {
                    let ud = self.ops.insert(Op::RemoveBuffers { pool: pi });
                    // SAFETY: REMOVE_BUFFERS points at no memory.
                    unsafe { self.push(e.user_data(ud)) };
                }
            }
            while self.ops.live() > 0 && Instant::now() < deadline {
                if self.submit(Some(Duration::from_millis(50))).is_err() {
                    break;
                }
                let cqes: Vec<(u64, i32)> = self
                    .ring
                    .completion()
                    .map(|c| (c.user_data(), c.result()))
                    .collect();
                for (ud, res) in cqes {
                    if let Some(Op::RemoveBuffers { pool }) = self.ops.remove(ud) {
                        self.pools[pool].pool.buffers_removed(res);
                    }
                }
            }
        }
        if self.in_flight() > 0 {
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
