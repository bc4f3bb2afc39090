//! Sending from chunks: a socket's send queue, one send or sendmsg in flight at a time,
//! partial sends resumed, then shutdown or close once the queue is empty.

use super::*;

impl Driver {
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
        let datagram = sock.datagram;
        let io = sock.io();
        for c in chunks {
            if !c.is_empty() {
                io.tx_bytes += c.len();
                io.tx.push_back(c);
                if datagram {
                    io.dest.push_back(None);
                }
            }
        }
        self.start_send(idx);
        // Nothing to send after all (only empty chunks): no queues to keep.
        self.at(idx).trim();
        Ok(())
    }

    /// Queues `chunk` to send on datagram socket `s` (one receiving from a
    /// [datagram pool](Self::add_datagram_pool)) as one datagram to `to`: what an unconnected
    /// UDP server replies with. A datagram that fails (`EMSGSIZE`, say) is dropped with an
    /// [`Event::SendFailed`]; the datagrams queued after it still go. An empty chunk sends
    /// nothing.
    ///
    /// Fails with [`Error::InvalidState`] on a socket that does not receive datagrams.
    pub fn send_to(&mut self, s: SocketId, chunk: Chunk, to: SocketAddr) -> Result<()> {
        let idx = self.live(s)?;
        let sock = self.at(idx);
        if !sock.datagram {
            return Err(Error::InvalidState {
                op: "send_to",
                reason: "the socket does not receive from a datagram pool",
            });
        }
        if sock.shutdown || sock.close_after_send {
            return Err(Error::InvalidState {
                op: "send_to",
                reason: "the socket's write side is shut down",
            });
        }
        if !chunk.is_empty() {
            let io = sock.io();
            io.tx_bytes += chunk.len();
            io.tx.push_back(chunk);
            io.dest.push_back(Some(to));
        }
        self.start_send(idx);
        self.at(idx).trim();
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
        Ok(self.sock(s)?.tx_bytes())
    }

    /// Shuts `s`'s write side down (the peer reads end of stream) once everything queued is
    /// sent. Receiving goes on.
    pub fn shutdown(&mut self, s: SocketId) -> Result<()> {
        let idx = self.live(s)?;
        self.at(idx).shutdown = true;
        self.finish_sends(idx);
        Ok(())
    }

    /// Sends the front of the queue if nothing is in flight: one `send` for one chunk, one
    /// `sendmsg` over up to 64 chunks.
    pub(super) fn start_send(&mut self, idx: u32) {
        let sock = self.at(idx);
        if sock.sending() > 0 || sock.tx_empty() || sock.closing || sock.connecting {
            return;
        }
        let Some(fd) = sock.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        let datagram = sock.datagram;
        let io = sock.io();
        // A datagram socket sends one chunk per request: one sendmsg over several would make
        // them one datagram.
        let e = if let Some(Some(to)) = io.dest.front().filter(|_| datagram) {
            // One datagram to `to`: a sendmsg with a name.
            let (name, len) = super::conn::sockaddr(to);
            let batch = io.batch.get_or_insert_with(|| {
                // SAFETY: msghdr, iovec and sockaddr_storage are plain old data; all zero
                // (null pointers, zero lengths) is a valid value.
                Box::new(unsafe { std::mem::zeroed::<Batch>() })
            });
            let c = &io.tx[0];
            batch.name = name;
            batch.iov[0].iov_base = c.as_ptr() as *mut libc::c_void;
            batch.iov[0].iov_len = c.len();
            batch.msg.msg_name = (&mut batch.name as *mut libc::sockaddr_storage).cast();
            batch.msg.msg_namelen = len;
            batch.msg.msg_iov = batch.iov.as_mut_ptr();
            batch.msg.msg_iovlen = 1;
            io.sending = 1;
            opcode::SendMsg::new(Fd(fd), &batch.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        } else if io.tx.len() == 1 || datagram {
            let c = &io.tx[0];
            io.sending = 1;
            opcode::Send::new(Fd(fd), c.as_ptr(), c.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            let batch = io.batch.get_or_insert_with(|| {
                // SAFETY: msghdr and iovec are plain old data; all zero (null pointers, zero
                // lengths) is a valid value.
                Box::new(unsafe { std::mem::zeroed::<Batch>() })
            });
            let n = io.tx.len().min(MAX_IOV);
            for (iov, c) in batch.iov.iter_mut().zip(io.tx.iter()) {
                iov.iov_base = c.as_ptr() as *mut libc::c_void;
                iov.iov_len = c.len();
            }
            batch.msg.msg_name = std::ptr::null_mut();
            batch.msg.msg_namelen = 0;
            batch.msg.msg_iov = batch.iov.as_mut_ptr();
            batch.msg.msg_iovlen = n;
            io.sending = n;
            opcode::SendMsg::new(Fd(fd), &batch.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        };
        sock.inflight += 1;
        let ud = self.ops.insert(Op::Send { sock: idx });
        self.at(idx).io().send_op = Some(nz(ud));
        // SAFETY: the chunks stay in the socket's queue, and the boxed batch in its boxed
        // queues, until this send completes: nothing removes the first `sending` chunks before
        // then (spills skip them; a closing socket keeps them), the queues are dropped only
        // when no send is in flight (`Socket::trim`), and the socket is freed only when its
        // in-flight count is zero.
        unsafe { self.push(e.user_data(ud)) };
    }

    pub(super) fn on_send(&mut self, idx: u32, res: i32) {
        let now = self.now;
        let now = self.stamp(now);
        let sock = self.at(idx);
        sock.inflight -= 1;
        let closing = sock.closing;
        let io = sock.io();
        io.sending = 0;
        io.send_op = None;
        if closing {
            io.clear_tx();
            self.maybe_free(idx);
            return;
        }
        if res > 0 {
            io.consume_sent(res as usize);
            sock.active = now;
            sock.idle_signalled = false;
            sock.idle_outq = u32::MAX;
        }
        // A send stopped before it sent anything, to be sent again: cancelled (ECANCELED; a
        // send the kernel was running in its worker threads ends with EINTR instead, as on 6.1)
        // or interrupted.
        let stopped = matches!(-res, libc::ECANCELED | libc::EINTR | libc::EAGAIN);
        if std::mem::take(&mut sock.spill_cancel) && (res >= 0 || stopped) {
            let (chunks, bytes) = sock.io().spill();
            self.stats.spilled_chunks += chunks as u64;
            self.stats.spilled_bytes += bytes as u64;
        } else if res < 0 && matches!(-res, libc::EINTR | libc::EAGAIN) {
            // Interrupted without a cancel of ours: send again.
        } else if res < 0 && sock.datagram {
            // One datagram failed: it goes, the others are still to send.
            let io = sock.io();
            if let Some(c) = io.pop_tx() {
                io.tx_bytes -= c.len();
            }
            let id = self.id_of(idx);
            self.events.push_back(Event::SendFailed {
                socket: id,
                error: io_err(-res),
            });
        } else if res <= 0 {
            let error = if res == 0 {
                io_err(libc::EPIPE)
            } else {
                io_err(-res)
            };
            let io = sock.io();
            io.clear_tx();
            let id = self.id_of(idx);
            self.events
                .push_back(Event::SendFailed { socket: id, error });
            self.peer_sent(idx);
            self.at(idx).trim();
            if self.at(idx).close_after_send {
                self.teardown(idx, true);
            }
            return;
        }
        if self.at(idx).tx_empty() {
            // All sent: a receive stopped by this queue (on the linked socket) may go on.
            self.peer_sent(idx);
            self.finish_sends(idx);
        } else {
            self.start_send(idx);
        }
    }

    /// The send queue is empty: report it, then shut down or close if that was asked for.
    pub(super) fn finish_sends(&mut self, idx: u32) {
        let sock = self.at(idx);
        if !sock.tx_empty() || sock.sending() > 0 {
            return;
        }
        sock.trim();
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
}
