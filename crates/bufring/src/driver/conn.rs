//! A socket's life around its data: connecting (with a linked timeout), accepting (pausing on
//! descriptor shortages), cancelling, and closing (cleanly or with a reset).

use super::*;

impl Driver {
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
        // The linked timeout is not the socket's: it names only its own timespec, which its op
        // keeps until its completion.
        sock.inflight += 1;
        let ud = self.ops.insert(Op::Connect {
            sock: idx,
            _addr: addr,
        });
        self.at(idx).io().connect_op = Some(nz(ud));
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

    /// Closes `s` once everything queued to send has been sent (a send failure closes it
    /// too). From the moment it starts closing, events about it not yet taken are dropped and
    /// calls naming it fail with [`Error::NotOpen`]; [`Event::Closed`] comes last.
    pub fn close(&mut self, s: SocketId) -> Result<()> {
        let idx = self.live(s)?;
        let sock = self.at(idx);
        sock.close_after_send = true;
        if sock.tx_empty() {
            self.teardown(idx, false);
        }
        Ok(())
    }

    /// Closes `s` now with a reset (SO_LINGER 0): the peer sees ECONNRESET rather than a clean
    /// end of stream, so it cannot mistake a cut transfer for a complete one. What was queued
    /// is dropped, and so are events about it not yet taken; [`Event::Closed`] comes last.
    pub fn reset(&mut self, s: SocketId) -> Result<()> {
        let idx = self.live(s)?;
        self.teardown(idx, true);
        Ok(())
    }

    /// Takes `s` back out of the driver without closing it: cancels its requests, waits until
    /// they have ended (running the ring meanwhile, at most `timeout`; other sockets' events
    /// queue up as usual) and returns the fd. What was queued on it is dropped, and so are its
    /// events; no `Closed` follows. If its requests do not end in time, it fails with a
    /// TimedOut error and the driver closes the socket once they do.
    pub fn release(&mut self, s: SocketId, timeout: Duration) -> Result<OwnedFd> {
        let idx = self.live(s)?;
        self.at(idx).release = true;
        self.teardown(idx, false);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(fd) = self.released.take() {
                return Ok(fd);
            }
            let now = Instant::now();
            if now >= deadline {
                if let Some(sock) = self.sockets[idx as usize].sock.as_mut() {
                    sock.release = false;
                }
                return Err(Error::kernel(
                    "release (cancelling the socket's requests)",
                    io_err(libc::ETIMEDOUT),
                ));
            }
            self.submit(Some((deadline - now).min(Duration::from_millis(10))))?;
            self.reap_and_settle();
        }
    }

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

    pub(super) fn on_connect(&mut self, idx: u32, res: i32) {
        let sock = self.at(idx);
        sock.inflight -= 1;
        sock.connecting = false;
        sock.io().connect_op = None;
        sock.trim();
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
        let connected = result.is_ok();
        let id = self.id_of(idx);
        self.events
            .push_back(Event::Connected { socket: id, result });
        if connected {
            if self.at(idx).recv == RecvState::Paused {
                self.arm_recv(idx);
            }
            self.start_send(idx);
        }
    }

    pub(super) fn arm_accept(&mut self, li: usize) {
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

    pub(super) fn on_accept(&mut self, ud: u64, li: usize, res: i32, more: bool) {
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
    pub(super) fn resume_accepts(&mut self) {
        self.accept_retry = None;
        for li in 0..self.listeners.len() {
            if self.listeners[li].paused {
                self.arm_accept(li);
            }
        }
    }

    /// Cancels the request `target`; a socket's cancel counts in its in-flight requests.
    pub(super) fn cancel(&mut self, target: u64, sock: Option<u32>) {
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
    pub(super) fn teardown(&mut self, idx: u32, reset: bool) {
        let sock = self.at(idx);
        if sock.closing {
            return;
        }
        sock.closing = true;
        // Events not yet taken about this socket are moot now: after a close or reset, the
        // next and last one is `Closed`.
        let id = self.id_of(idx);
        self.events.retain(|e| e.socket() != Some(id));
        let sock = self.at(idx);
        if reset {
            if let Some(fd) = &sock.fd {
                set_linger_zero(fd.as_raw_fd());
            }
        }
        let was_on = sock.recv != RecvState::Off;
        sock.recv = RecvState::Off;
        let (send_op, connect_op) = match sock.io.as_mut() {
            Some(io) => {
                io.rx.clear();
                io.rx_bytes = 0;
                io.end = None;
                if io.sending == 0 {
                    io.clear_tx();
                }
                (io.send_op, io.connect_op)
            }
            None => (None, None),
        };
        sock.trim();
        let pool = sock.pool as usize;
        let uds = [sock.recv_op, send_op, connect_op, sock.watch_op];
        if std::mem::take(&mut sock.idle_ms) != 0 {
            self.idle_sockets -= 1;
        }
        if was_on {
            self.pools[pool].receivers -= 1;
        }
        for ud in uds.into_iter().flatten() {
            self.cancel(ud.get(), Some(idx));
        }
        // Its send queue may be gone: the linked socket may receive again.
        self.peer_sent(idx);
        self.maybe_free(idx);
    }

    pub(super) fn maybe_free(&mut self, idx: u32) {
        let sock = self.at(idx);
        if !sock.closing || sock.inflight > 0 {
            return;
        }
        let id = self.id_of(idx);
        let slot = &mut self.sockets[idx as usize];
        let mut sock = slot.sock.take().expect("live");
        slot.gen = slot.gen.wrapping_add(1);
        let peer = std::mem::replace(&mut slot.peer, NO_PEER);
        self.free_sockets.push(idx);
        self.stats.sockets -= 1;
        if sock.release {
            // Handed back, not closed: `release` takes it from here.
            self.released = sock.fd.take();
        } else {
            self.events.push_back(Event::Closed { socket: id });
        }
        drop(sock); // closes the fd, unless released
        if peer != NO_PEER {
            // The link ends; what this socket had queued to send no longer holds the other's
            // receive back.
            self.sockets[peer as usize].peer = NO_PEER;
            self.rearm_linked(peer);
        }
        if self.listeners.iter().any(|l| l.paused) {
            self.resume_accepts();
        }
    }
}

pub(super) fn set_linger_zero(fd: RawFd) {
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

pub(super) fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
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
