//! One socket the driver owns: its file descriptor, the chunks received and not yet read (the
//! receive queue), the chunks queued to send, and where its requests stand. The slab of
//! sockets names each by slot and generation, so a closed socket's handle stays dead.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::num::NonZeroU64;
use std::os::fd::OwnedFd;

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
    /// A datagram's destination (`Driver::send_to`).
    pub(super) name: libc::sockaddr_storage,
}

/// One socket's record, kept small (72 bytes with its slot) because an idle connection costs
/// only this: what a socket needs while data moves (its queues, a send in flight, a connect)
/// lives in [`Io`], boxed on demand and dropped once the socket is quiet again.
pub(super) struct Socket {
    pub(super) fd: Option<OwnedFd>,
    /// The pool receives select from.
    pub(super) pool: u16,
    /// Requests in flight that name this socket (a handful at most: a receive, an error
    /// watch, a send, a connect and their cancels); the slot is freed at zero once closing.
    pub(super) inflight: u16,
    /// It receives from a datagram pool (from its first `recv` on one): each chunk queued to
    /// send goes as a datagram of its own.
    pub(super) datagram: bool,
    /// The idle timeout in milliseconds (0: none).
    pub(super) idle_ms: u32,
    /// The kernel's send queue at the last idle check (`u32::MAX` after a send completed).
    pub(super) idle_outq: u32,
    pub(super) recv: RecvState,
    /// Receives armed so far (mod 32 in their user_data).
    pub(super) recv_seq: u8,
    /// The stream ended (end of file or an error arrived): no more receives.
    pub(super) ended: bool,
    /// A `Readable` event was sent and the queue has not been emptied since.
    pub(super) signalled: bool,
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
    /// An `Idle` event was sent and no data moved since.
    pub(super) idle_signalled: bool,
    /// Its receives bring big pieces (a bulk transfer): on a pool built for bundles, they are
    /// armed as bundles. Small messages are received one buffer per completion, which costs
    /// less (see `Driver::note_piece`).
    pub(super) bulk: bool,
    /// The user_data of its receive in flight (`ops::recv_ud`: it names the socket, no op).
    pub(super) recv_op: Option<NonZeroU64>,
    /// The error watch while the receive is stopped at its quota.
    pub(super) watch_op: Option<NonZeroU64>,
    /// The last time data moved, in nanoseconds since the driver was built.
    pub(super) active: u64,
    /// Queues and requests of a socket moving data; `None` while there are none.
    pub(super) io: Option<Box<Io>>,
}

thread_local! {
    /// Quiet sockets' queue boxes, kept for the next socket that moves data: a request/response
    /// connection would otherwise allocate and free its queues for every message. Per thread,
    /// because a driver stays on its thread; at most `SPARES`, each with room for
    /// `SPARE_QUEUE` chunks each way (under 64 KiB in all).
    // Boxes, not values: the allocations themselves are what is kept for reuse.
    #[allow(clippy::vec_box)]
    static SPARE_IO: RefCell<Vec<Box<Io>>> = const { RefCell::new(Vec::new()) };
}
const SPARES: usize = 64;
const SPARE_QUEUE: usize = 8;

/// What a socket holds while data moves; dropped (see [`Socket::trim`]) when all is empty.
#[derive(Default)]
pub(super) struct Io {
    /// Received, not yet read; `rx_bytes` in all.
    pub(super) rx: VecDeque<Chunk>,
    pub(super) rx_bytes: usize,
    /// After the queued chunks: end of stream or an error (no more receives then).
    pub(super) end: Option<End>,
    /// Queued to send; the first `sending` chunks are in flight.
    pub(super) tx: VecDeque<Chunk>,
    pub(super) tx_bytes: usize,
    /// On a datagram socket, where each chunk of `tx` goes (`None`: the connected peer); empty
    /// on stream sockets.
    pub(super) dest: VecDeque<Option<std::net::SocketAddr>>,
    pub(super) sending: usize,
    pub(super) batch: Option<Box<Batch>>,
    /// The user_data of its send and connect in flight.
    pub(super) send_op: Option<NonZeroU64>,
    pub(super) connect_op: Option<NonZeroU64>,
}

impl Io {
    fn quiet(&self) -> bool {
        self.rx.is_empty()
            && self.end.is_none()
            && self.tx.is_empty()
            && self.sending == 0
            && self.send_op.is_none()
            && self.connect_op.is_none()
    }
}

impl Socket {
    pub(super) fn new(fd: OwnedFd, now: u64) -> Self {
        Socket {
            fd: Some(fd),
            pool: 0,
            inflight: 0,
            datagram: false,
            idle_ms: 0,
            idle_outq: u32::MAX,
            recv: RecvState::Off,
            recv_seq: 0,
            ended: false,
            signalled: false,
            throttled: false,
            spill_cancel: false,
            shutdown: false,
            close_after_send: false,
            closing: false,
            release: false,
            connecting: false,
            idle_signalled: false,
            bulk: false,
            recv_op: None,
            watch_op: None,
            active: now,
            io: None,
        }
    }

    /// The socket's queues, made if it has none (from the thread's spares if it has one).
    pub(super) fn io(&mut self) -> &mut Io {
        self.io.get_or_insert_with(|| {
            SPARE_IO
                .try_with(|s| s.borrow_mut().pop())
                .ok()
                .flatten()
                .unwrap_or_default()
        })
    }

    /// Drops the queues once nothing is in them and no send or connect is in flight: a quiet
    /// connection keeps only its record. The box goes to the thread's spares.
    pub(super) fn trim(&mut self) {
        if !self.io.as_ref().is_some_and(|io| io.quiet()) {
            return;
        }
        let Some(mut io) = self.io.take() else { return };
        // Spares keep little: room for a few chunks each way, no sendmsg header (1 KiB; a
        // socket sending batches is rarely quiet between them).
        io.rx.shrink_to(SPARE_QUEUE);
        io.tx.shrink_to(SPARE_QUEUE);
        io.dest = VecDeque::new();
        io.batch = None;
        let _ = SPARE_IO.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARES {
                s.push(io);
            }
        });
    }

    pub(super) fn rx_bytes(&self) -> usize {
        self.io.as_ref().map_or(0, |io| io.rx_bytes)
    }

    pub(super) fn tx_bytes(&self) -> usize {
        self.io.as_ref().map_or(0, |io| io.tx_bytes)
    }

    pub(super) fn sending(&self) -> usize {
        self.io.as_ref().map_or(0, |io| io.sending)
    }

    pub(super) fn tx_empty(&self) -> bool {
        self.io.as_ref().is_none_or(|io| io.tx.is_empty())
    }

    pub(super) fn send_op(&self) -> Option<NonZeroU64> {
        self.io.as_ref().and_then(|io| io.send_op)
    }

    /// Bytes of pool memory this socket's chunks hold (those a spill could move, and those in
    /// flight).
    pub(super) fn pool_bytes(&self) -> usize {
        self.io.as_ref().map_or(0, |io| {
            io.rx
                .iter()
                .chain(io.tx.iter())
                .filter(|c| c.in_pool())
                .map(|c| c.len())
                .sum()
        })
    }
}

impl Io {
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
                self.pop_tx();
                gone += 1;
            } else {
                front.advance(n);
                n = 0;
            }
        }
        // Chunks emptied by an earlier advance (zero-length sends are skipped).
        while self.tx.front().is_some_and(|c| c.is_empty()) {
            self.pop_tx();
            gone += 1;
        }
        gone
    }

    /// Drops the first chunk queued to send (and its destination, on a datagram socket).
    pub(super) fn pop_tx(&mut self) -> Option<Chunk> {
        self.dest.pop_front();
        self.tx.pop_front()
    }

    /// Drops everything queued to send.
    pub(super) fn clear_tx(&mut self) {
        self.tx.clear();
        self.dest.clear();
        self.tx_bytes = 0;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection costs its socket records: keep them within a cache line.
    #[test]
    fn a_socket_record_fits_a_cache_line() {
        assert!(
            std::mem::size_of::<Socket>() <= 64,
            "{}",
            std::mem::size_of::<Socket>()
        );
        assert!(std::mem::size_of::<Option<Socket>>() <= 64);
        // With its slot (generation and link): the 72 bytes the docs promise.
        assert!(std::mem::size_of::<super::super::SockSlot>() <= 72);
    }

    /// The spare queue boxes a thread keeps stay under 64 KiB.
    #[test]
    fn spares_stay_small() {
        let each = std::mem::size_of::<Io>() + 2 * SPARE_QUEUE * std::mem::size_of::<Chunk>();
        assert!(SPARES * each < 64 * 1024, "{SPARES} x {each} bytes");
    }
}
