//! Receiving: a socket's receive requests (multishot, limited to its quota where the kernel
//! can), their completions turned into the receive queue, and reads from it.

use super::*;

/// The piece size that marks a socket as bulk (see `Driver::note_piece`), at most a buffer.
const BULK_PIECE: usize = 16 * 1024;

impl Driver {
    /// Starts receiving on `s` into buffers of `pool`: what arrives is queued for
    /// [`read`](Self::read), announced by [`Event::Readable`]. On a socket still
    /// [connecting](Self::connect), receiving starts once it is connected.
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
        if sock.ended {
            return Err(Error::InvalidState {
                op: "recv",
                reason: "the socket's stream has ended",
            });
        }
        if sock.recv_op.is_some() && sock.pool as usize != pool.0 {
            return Err(Error::InvalidState {
                op: "recv",
                reason: "the stopped receive on another pool has not ended yet",
            });
        }
        // At most 65,536 pools: each has its own buffer group id (u16) in the ring.
        sock.pool = pool.0 as u16;
        if self.pools[pool.0].recvmsg.is_some() {
            self.at(idx).datagram = true;
        }
        self.pools[pool.0].receivers += 1;
        let sock = self.at(idx);
        if sock.recv_op.is_some() {
            // A stopped receive has not ended yet: start again once it has (a second receive
            // on the socket now could interleave with its last completions).
            sock.recv = RecvState::Cancelling;
        } else {
            sock.recv = RecvState::Paused;
            self.arm_recv(idx);
        }
        Ok(())
    }

    /// Stops receiving on `s`: the receive is cancelled, what was received stays queued for
    /// [`read`](Self::read), and [`recv`](Self::recv) starts it again.
    pub fn stop_recv(&mut self, s: SocketId) -> Result<()> {
        let idx = self.live(s)?;
        let sock = self.at(idx);
        if sock.recv == RecvState::Off {
            return Ok(());
        }
        sock.recv = RecvState::Off;
        let (pool, op) = (sock.pool as usize, sock.recv_op);
        self.pools[pool].receivers -= 1;
        if let Some(ud) = op {
            self.cancel(ud.get(), Some(idx));
        }
        Ok(())
    }

    /// Takes the next item of `s`'s receive queue: data in stream order, then the end (once),
    /// then nothing. `Ok(None)` means nothing has arrived yet.
    pub fn read(&mut self, s: SocketId) -> Result<Option<Received>> {
        let idx = self.live(s)?;
        let sock = self.at(idx);
        let Some(io) = sock.io.as_mut() else {
            sock.signalled = false;
            return Ok(None);
        };
        if let Some(c) = io.rx.pop_front() {
            io.rx_bytes -= c.len();
            if io.rx.is_empty() && io.end.is_none() {
                sock.signalled = false;
                sock.trim();
            }
            if sock.recv == RecvState::Paused {
                self.rearm_if_room(idx);
            }
            return Ok(Some(Received::Data(c)));
        }
        let end = io.end.take();
        sock.signalled = false;
        sock.trim();
        Ok(match end {
            Some(End::Eof) => Some(Received::End),
            Some(End::Error(e)) => Some(Received::Error(e)),
            None => None,
        })
    }

    /// Takes the next item of a datagram socket's receive queue (a socket receiving from a
    /// pool added with [`add_datagram_pool`](Self::add_datagram_pool)): one datagram, whole,
    /// its payload in place; then, if the receive failed, the error (once). `Ok(None)` means
    /// nothing has arrived yet. A message whose layout does not hold together (not what the
    /// kernel writes) is dropped and counted in [`DriverStats::rejected`].
    ///
    /// Fails with [`Error::InvalidState`] on a socket that does not receive datagrams.
    pub fn read_datagram(&mut self, s: SocketId) -> Result<Option<Received<Datagram>>> {
        let pool = self.sock(s)?.pool as usize;
        if !self.sock(s)?.datagram {
            return Err(Error::InvalidState {
                op: "read_datagram",
                reason: "the socket does not receive from a datagram pool",
            });
        }
        loop {
            let item = match self.read(s)? {
                Some(Received::Data(chunk)) => chunk,
                Some(Received::End) => return Ok(Some(Received::End)),
                Some(Received::Error(e)) => return Ok(Some(Received::Error(e))),
                None => return Ok(None),
            };
            let Some(msg) = self.pools[pool].recvmsg.as_deref() else {
                return Err(Error::InvalidState {
                    op: "read_datagram",
                    reason: "the socket does not receive from a datagram pool",
                });
            };
            match msg.parse(item) {
                Ok(d) => return Ok(Some(Received::Data(d))),
                Err(_) => self.stats.rejected += 1,
            }
        }
    }

    /// Whether a receive is in flight on `s`: after [`stop_recv`](Self::stop_recv), true until
    /// its last completion has come (and queued what it brought), so that a caller handing the
    /// socket back can [`read`](Self::read) every byte that arrived before
    /// [`release`](Self::release).
    pub fn recv_in_flight(&self, s: SocketId) -> Result<bool> {
        Ok(self.sock(s)?.recv_op.is_some())
    }

    /// The length of the chunk the next [`read`](Self::read) gives, if the next item is data:
    /// so a forwarder can take only what fits where it goes.
    pub fn peek_len(&self, s: SocketId) -> Result<Option<usize>> {
        let io = self.sock(s)?.io.as_ref();
        Ok(io.and_then(|io| io.rx.front()).map(|c| c.len()))
    }

    /// Bytes received on `s` and not yet read.
    pub fn queued(&self, s: SocketId) -> Result<usize> {
        Ok(self.sock(s)?.rx_bytes())
    }

    /// Links `a` and `b` as the two ends of a forwarder (a proxy's client and upstream
    /// sockets): from now on what each has queued to send counts against the *other's*
    /// receive quota, as well as what the other has received and not read. A forwarder that
    /// moves what `a` received into `b`'s send queue then holds at most one quota per
    /// direction (plus what one completion brings), not a quota received and as much again
    /// unsent. A receive stopped that way starts again once the other's send queue is empty
    /// (and the receive queue under half the quota). The link ends when either socket is
    /// closed.
    ///
    /// Fails with [`Error::NotOpen`] for a dead socket and [`Error::InvalidState`] when `a` is
    /// `b` or either is linked already.
    pub fn link(&mut self, a: SocketId, b: SocketId) -> Result<()> {
        let (ia, ib) = (self.live(a)?, self.live(b)?);
        if ia == ib {
            return Err(Error::InvalidState {
                op: "link",
                reason: "a socket cannot be linked to itself",
            });
        }
        if self.sockets[ia as usize].peer != NO_PEER || self.sockets[ib as usize].peer != NO_PEER {
            return Err(Error::InvalidState {
                op: "link",
                reason: "the socket is linked already",
            });
        }
        self.sockets[ia as usize].peer = ib;
        self.sockets[ib as usize].peer = ia;
        Ok(())
    }

    /// What counts against `idx`'s receive quota: its receive queue, and the send queue of the
    /// socket linked to it.
    pub(super) fn held(&self, idx: u32) -> usize {
        let own = self.sockets[idx as usize]
            .sock
            .as_ref()
            .map_or(0, |s| s.rx_bytes());
        match self.sockets[idx as usize].peer {
            NO_PEER => own,
            p => {
                own + self.sockets[p as usize]
                    .sock
                    .as_ref()
                    .map_or(0, |s| s.tx_bytes())
            }
        }
    }

    /// Starts a receive stopped at its quota again once what it holds is under half of it.
    pub(super) fn rearm_if_room(&mut self, idx: u32) {
        let pool = self.at(idx).pool as usize;
        if self.held(idx) <= self.quota(pool) / 2 {
            self.arm_recv(idx);
        }
    }

    /// `idx`'s send queue emptied (or was dropped): the socket linked to it may receive again.
    /// Only then, not at every partial send: a slow reader's sends complete a few KiB at a
    /// time, and starting the linked receive at each (for half a quota) made many small
    /// receive cycles (5 times the stops, and 10-40 % fewer requests/s for normal clients
    /// beside 800 slow readers in the proxy).
    pub(super) fn peer_sent(&mut self, idx: u32) {
        let peer = self.sockets[idx as usize].peer;
        if peer != NO_PEER {
            self.rearm_linked(peer);
        }
    }

    /// Restarts `peer`'s receive if it waits (paused, not closing) and now has room: what held
    /// it back (its linked socket's send queue, or the link itself) has gone.
    pub(super) fn rearm_linked(&mut self, peer: u32) {
        if self.sockets[peer as usize]
            .sock
            .as_ref()
            .is_some_and(|s| s.recv == RecvState::Paused && !s.closing)
        {
            self.rearm_if_room(peer);
        }
    }

    /// The receive quota of a socket of `pool` right now: its fair share of the pool's bytes
    /// (`pool bytes / receivers`) within [`DriverBuilder::recv_quota`]'s bounds. An application
    /// that queues data of its own per socket (a proxy's send queues) can hold itself to it too.
    pub fn recv_quota(&self, pool: PoolId) -> Result<usize> {
        if pool.0 >= self.pools.len() {
            return Err(Error::NotOpen { what: "pool" });
        }
        Ok(self.quota(pool.0))
    }

    pub(super) fn quota(&self, pool: usize) -> usize {
        let p = &self.pools[pool];
        let bytes = u64::from(p.pool.count()) * u64::from(p.pool.buf_len());
        policy::quota(bytes, p.receivers, self.cfg.quota.0, self.cfg.quota.1)
    }

    /// Submits a receive for a socket that wants one (`Paused` or `Waiting`): multishot,
    /// limited to the room left under its quota where the kernel can; single-shot on kernels
    /// without multishot receives, and for a socket that went over its quota on kernels without
    /// the limit.
    pub(super) fn arm_recv(&mut self, idx: u32) {
        let (multishot, limit) = (self.multishot_recv, self.recv_limit);
        let pool = self.at(idx).pool as usize;
        let quota = self.quota(pool);
        let sock = self.at(idx);
        let Some(fd) = sock.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        if sock.connecting {
            // Not connected yet: the connect's completion starts it.
            sock.recv = RecvState::Paused;
            return;
        }
        let datagrams = match self.pools[pool].recvmsg.as_deref() {
            // Always multishot, never limited or bundled: recvmsg has neither.
            Some(msg) => Some(msg.multishot(&self.pools[pool].pool, fd)),
            None => None,
        };
        if let Some(Err(e)) = datagrams {
            // Not reached: the pool passed the same check when it was added.
            self.end_recv(idx, End::Error(io::Error::other(e)));
            return;
        }
        let sock = self.at(idx);
        sock.recv = RecvState::Armed;
        sock.inflight += 1;
        let (throttled, bulk) = (sock.throttled, sock.bulk);
        let room = quota
            .saturating_sub(self.held(idx))
            .clamp(1, u32::MAX as usize) as u32;
        let p = &self.pools[pool].pool;
        // Bundles where the pool was built for them and the socket's receives come in big
        // pieces: one completion may bring several buffers.
        let bundles = p.bundles_declared() && bulk;
        let single = !multishot || (throttled && !limit);
        // One buffer at most while throttled: a bundle takes whatever the socket holds.
        let bundle = bundles && !(single && throttled);
        let (e, multishot, limited) = match (single, limit) {
            _ if datagrams.is_some() => match datagrams {
                Some(Ok(e)) => (e, true, false),
                _ => unreachable!("a failed recvmsg returned above"),
            },
            (true, _) if bundle => (p.recv_bundle(fd), false, false),
            (true, _) => (p.recv(fd), false, false),
            (false, true) if bundle => (p.recv_multishot_bundle_limit(fd, room), true, true),
            (false, true) => (p.recv_multishot_limit(fd, room), true, true),
            (false, false) if bundle => (p.recv_multishot_bundle(fd), true, false),
            (false, false) => (p.recv_multishot(fd), true, false),
        };
        self.stats.receives_armed += 1;
        self.stats.bundle_receives += u64::from(bundle);
        let gen = self.sockets[idx as usize].gen;
        let sock = self.at(idx);
        sock.recv_seq = sock.recv_seq.wrapping_add(1);
        let ud = recv_ud(idx, gen, sock.recv_seq, multishot, limited);
        sock.recv_op = Some(nz(ud));
        self.recvs += 1;
        // SAFETY: the pool lives as long as the driver, whose drop waits for every request (or
        // leaks the pool); the fd stays open until the socket's requests have ended.
        unsafe { self.push(e.user_data(ud)) };
    }

    /// A receive's completion; `how` is (multishot, limited) as it was submitted.
    pub(super) fn on_recv(&mut self, ud: u64, idx: u32, pool: usize, how: (bool, bool), cqe: Cqe) {
        let more = cqe.more();
        // SAFETY: this CQE was reaped from the driver's ring, where the pool is registered; its
        // user_data names a live receive the driver submitted on this pool (stale or unknown
        // user_data never gets here), and each CQE is dispatched once.
        let completion = unsafe { self.pools[pool].pool.complete(cqe) };
        if completion.is_err() {
            // Refused as inconsistent: it changes nothing, not even whether the receive goes
            // on (its flags cannot be trusted either).
            self.stats.rejected += 1;
            return;
        }
        if !more {
            self.recvs -= 1;
            let sock = self.at(idx);
            sock.inflight -= 1;
            sock.recv_op = None;
        }
        let (quota, now) = (self.quota(pool), self.stamp(self.now));
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
        // Ended by itself (its byte limit, a single shot), not by a cancel of ours.
        let ended_itself = ended && sock.recv == RecvState::Armed;
        match completion {
            Err(_) => unreachable!("refused completions returned above"),
            Ok(Completion::Data { chunks, .. }) => {
                let io = sock.io();
                let mut piece = 0;
                for c in chunks {
                    piece += c.len();
                    io.rx_bytes += c.len();
                    io.rx.push_back(c);
                }
                if self.note_piece(idx, pool, piece) && more {
                    // Now bulk: end this single-buffer receive, so that it is armed again as
                    // a bundle (once per switch; a bundle receive ends often by itself).
                    let sock = self.at(idx);
                    if sock.recv == RecvState::Armed {
                        sock.recv = RecvState::Cancelling;
                        self.cancel(ud, Some(idx));
                    }
                }
                let sock = self.at(idx);
                sock.active = now;
                sock.idle_signalled = false;
                if !sock.signalled {
                    sock.signalled = true;
                    let id = self.id_of(idx);
                    self.events.push_back(Event::Readable { socket: id });
                }
                let over = self.held(idx) >= quota;
                let sock = self.at(idx);
                if more && sock.recv == RecvState::Armed && over {
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
            Ok(Completion::NoBuffers) if sock.recv == RecvState::Off => return,
            Ok(Completion::NoBuffers) if self.held(idx) >= quota => {
                // Out of buffers and over its quota: it waits for its reader, not in line.
                self.at(idx).recv = RecvState::Paused;
                self.stats.quota_pauses += 1;
                self.watch(idx);
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
                // A datagram socket's recvmsg multishot has no fallback: its errors end it.
                _ if self.pools[pool].recvmsg.is_some() => {
                    self.end_recv(idx, End::Error(e));
                    return;
                }
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
            if self.held(idx) < quota {
                self.arm_recv(idx);
            } else {
                // Stopped at its quota (counted here when no cancel of ours did it).
                self.stats.quota_pauses += u64::from(ended_itself);
                self.watch(idx);
            }
        }
    }

    /// Records the size of a piece `idx` received; true if that made the socket bulk where its
    /// pool is built for bundles (its receive should be armed again as a bundle). A piece of at
    /// least `min(16 KiB, buffer length)` makes it bulk; one under an eighth of that makes it
    /// not. Bundles cost small messages: on 6.18.44 a 1 KiB request/response proxy made about
    /// 13 % fewer requests/s with bundle receives on its incremental ring than without, while
    /// bulk streams gained from them (BENCHMARKS.md).
    pub(super) fn note_piece(&mut self, idx: u32, pool: usize, piece: usize) -> bool {
        let p = &self.pools[pool].pool;
        if !p.bundles_declared() || self.pools[pool].recvmsg.is_some() {
            return false;
        }
        let big = (p.buf_len() as usize).min(BULK_PIECE);
        let sock = self.at(idx);
        if piece >= big {
            !std::mem::replace(&mut sock.bulk, true)
        } else {
            if piece < big / 8 {
                sock.bulk = false;
            }
            false
        }
    }

    /// The pool of the receive in flight that `ud` names, if one is. A socket keeps the
    /// user_data its receive was armed with, which carries the slot's generation and the
    /// socket's count of receives then: an ended receive's, a closed socket's or a forged one
    /// matches nothing (stray).
    pub(super) fn receive_named(&self, r: RecvUd, ud: u64) -> Option<usize> {
        let sock = self.sockets.get(r.sock as usize)?.sock.as_ref()?;
        (sock.recv_op == Some(nz(ud))).then_some(sock.pool as usize)
    }

    /// Watches the socket of a stopped receive for an error (POLLERR): a peer that resets
    /// while nobody reads would otherwise go unnoticed until the reader catches up. One poll
    /// per socket at most; it stays armed until the socket fails, hangs up or closes.
    pub(super) fn watch(&mut self, idx: u32) {
        let sock = self.at(idx);
        if sock.watch_op.is_some() || sock.ended || sock.closing {
            return;
        }
        let Some(fd) = sock.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        sock.inflight += 1;
        let e = opcode::PollAdd::new(Fd(fd), (libc::POLLERR | libc::POLLHUP) as u32).build();
        let ud = self.ops.insert(Op::Watch { sock: idx });
        self.at(idx).watch_op = Some(nz(ud));
        // SAFETY: a poll points at no memory; the fd stays open until the socket's requests
        // (this one included) have ended.
        unsafe { self.push(e.user_data(ud)) };
    }

    pub(super) fn on_watch(&mut self, idx: u32, res: i32) {
        let sock = self.at(idx);
        sock.inflight -= 1;
        sock.watch_op = None;
        if sock.closing {
            self.maybe_free(idx);
            return;
        }
        // Only while no receive is in flight: one in flight reports the error itself, and
        // SO_ERROR, read here, would be gone for it.
        if res < 0 || res & i32::from(libc::POLLERR) == 0 || sock.recv_op.is_some() || sock.ended {
            return;
        }
        let Some(fd) = sock.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        let err = so_error(fd);
        if err != 0 {
            self.end_recv(idx, End::Error(io_err(err)));
        }
    }

    /// The stream ended (end of file, or an error): queue the end after the data.
    pub(super) fn end_recv(&mut self, idx: u32, end: End) {
        let sock = self.at(idx);
        let was_on = sock.recv != RecvState::Off;
        sock.io().end = Some(end);
        sock.ended = true;
        let pool = sock.pool as usize;
        if let Some(ud) = sock.recv_op {
            // A multishot ended early by an error still has its final completion to come.
            self.cancel(ud.get(), Some(idx));
        }
        let sock = self.at(idx);
        sock.recv = RecvState::Off;
        let notify = !sock.signalled;
        sock.signalled = true;
        let failed = match sock.io.as_ref().and_then(|io| io.end.as_ref()) {
            Some(End::Error(e)) => Some(copy_err(e)),
            _ => None,
        };
        if was_on {
            self.pools[pool].receivers -= 1;
        }
        if let Some(error) = failed {
            let id = self.id_of(idx);
            self.events.push_back(Event::Failed { socket: id, error });
        }
        if notify {
            let id = self.id_of(idx);
            self.events.push_back(Event::Readable { socket: id });
        }
    }
}

/// The socket's pending error (SO_ERROR, which reading clears), or 0.
fn so_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live int `err`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        err
    } else {
        0
    }
}

/// The same error again (`io::Error` is not `Clone`).
fn copy_err(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(n) => io_err(n),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}
