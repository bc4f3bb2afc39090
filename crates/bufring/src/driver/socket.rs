//! One socket the driver owns: its file descriptor, the chunks received and not yet read (the
//! receive queue), the chunks queued to send, and where its requests stand. The slab of
//! sockets names each by slot and generation, so a closed socket's handle stays dead.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::time::Instant;

use crate::Chunk;

/// Chunks one sendmsg sends at most.
pub(super) const MAX_IOV: usize = 64;

/// What a socket's receive queue ends with.
pub(super) enum End {
    /// The peer closed its side.
    Eof,
    /// The receive failed (a reset, for example).
    Error(io::Error),
}

/// Where a socket's receive stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecvState {
    /// Not receiving (never asked, ended, or closing).
    Off,
    /// A multishot receive is in flight.
    Armed,
    /// A multishot receive is in flight and a cancel for it was sent (quota reached).
    Cancelling,
    /// Asked to receive, no request in flight: the queue is over its quota.
    Paused,
    /// Asked to receive, no request in flight: the pool ran dry; waiting in line for buffers.
    Waiting,
}

/// The iovecs and message header of a batched send: they stay put while it is in flight.
pub(super) struct Batch {
    pub(super) msg: libc::msghdr,
    pub(super) iov: [libc::iovec; MAX_IOV],
}

pub(super) struct Socket {
    pub(super) fd: Option<OwnedFd>,
    /// The pool receives select from.
    pub(super) pool: usize,
    pub(super) recv: RecvState,
    /// Received, not yet read; `rx_bytes` in all.
    pub(super) rx: VecDeque<Chunk>,
    pub(super) rx_bytes: usize,
    /// After the queued chunks: end of stream or an error (no more receives then).
    pub(super) end: Option<End>,
    /// The stream ended (end of file or an error arrived): no more receives.
    pub(super) ended: bool,
    /// A `Readable` event was sent and the queue has not been emptied since.
    pub(super) signalled: bool,
    /// Queued to send; the first `sending` chunks are in flight.
    pub(super) tx: VecDeque<Chunk>,
    pub(super) tx_bytes: usize,
    pub(super) sending: usize,
    pub(super) batch: Option<Box<Batch>>,
    /// Went over its quota where the kernel has no receive limit: from then on single-shot
    /// receives of one buffer at most (a multishot receive on 6.1 drains the socket's whole
    /// receive queue in one wake-up, before any cancel can land).
    pub(super) throttled: bool,
    /// Its in-flight send was cancelled so that its chunks can move to the heap.
    pub(super) spill_cancel: bool,
    /// Shut the write side down once the queue is sent.
    pub(super) shutdown: bool,
    /// Close once the queue is sent.
    pub(super) close_after_send: bool,
    /// Being closed: cancels sent, waiting for its requests to end.
    pub(super) closing: bool,
    /// Being released: once its requests end, the fd goes back to the caller, not closed.
    pub(super) release: bool,
    /// A connect is in flight.
    pub(super) connecting: bool,
    /// The user_data of its receive, send and connect in flight.
    pub(super) recv_op: Option<u64>,
    pub(super) send_op: Option<u64>,
    pub(super) connect_op: Option<u64>,
    /// The error watch while the receive is stopped at its quota.
    pub(super) watch_op: Option<u64>,
    /// Requests in flight that name this socket; the slot is freed at zero once closing.
    pub(super) inflight: u32,
    /// The idle timeout, and the last time data moved.
    pub(super) idle_timeout: Option<std::time::Duration>,
    pub(super) active: Instant,
    /// An `Idle` event was sent and no data moved since.
    pub(super) idle_signalled: bool,
    /// The kernel's send queue at the last idle check (`usize::MAX` after a send completed).
    pub(super) idle_outq: usize,
}

impl Socket {
    pub(super) fn new(fd: OwnedFd, now: Instant) -> Self {
        Socket {
            fd: Some(fd),
            pool: 0,
            recv: RecvState::Off,
            rx: VecDeque::new(),
            rx_bytes: 0,
            end: None,
            ended: false,
            signalled: false,
            tx: VecDeque::new(),
            tx_bytes: 0,
            sending: 0,
            batch: None,
            throttled: false,
            spill_cancel: false,
            shutdown: false,
            close_after_send: false,
            closing: false,
            release: false,
            connecting: false,
            recv_op: None,
            send_op: None,
            connect_op: None,
            watch_op: None,
            inflight: 0,
            idle_timeout: None,
            active: now,
            idle_signalled: false,
            idle_outq: usize::MAX,
        }
    }

    /// Drops the first `n` sent bytes: whole chunks go (their buffers can go back), a partly
    /// sent one is advanced. Returns how many chunks went.
    pub(super) fn consume_sent(&mut self, mut n: usize) -> usize {
        self.tx_bytes -= n;
        let mut gone = 0;
        while n > 0 {
            let Some(front) = self.tx.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                self.tx.pop_front();
                gone += 1;
            } else {
                front.advance(n);
                n = 0;
            }
        }
        // Chunks emptied by an earlier advance (zero-length sends are skipped).
        while self.tx.front().is_some_and(|c| c.is_empty()) {
            self.tx.pop_front();
            gone += 1;
        }
        gone
    }

    /// Moves every pool chunk this socket holds and is free to move (received and not read;
    /// queued to send and not in flight) to the heap, so that their buffers can go back.
    /// Returns the chunks and bytes copied.
    pub(super) fn spill(&mut self) -> (usize, usize) {
        let (mut chunks, mut bytes) = (0, 0);
        let skip = self.sending;
        for c in self.rx.iter_mut().chain(self.tx.iter_mut().skip(skip)) {
            if c.in_pool() {
                chunks += 1;
                bytes += c.len();
                *c = c.to_heap();
            }
        }
        (chunks, bytes)
    }

    /// Bytes of pool memory this socket's chunks hold (those a spill could move, and those in
    /// flight).
    pub(super) fn pool_bytes(&self) -> usize {
        self.rx
            .iter()
            .chain(self.tx.iter())
            .filter(|c| c.in_pool())
            .map(|c| c.len())
            .sum()
    }
}
