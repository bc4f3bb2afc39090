//! One proxied connection: the client socket, the upstream socket, and per direction the
//! chunks received and not yet sent. Direction 0 carries client bytes upstream, direction 1
//! carries upstream bytes to the client.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use bufring::Chunk;

/// Chunks sent with one sendmsg at most.
pub const MAX_IOV: usize = 64;

/// Where a direction's multishot receive stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// No receive in flight (not yet armed, ended, or paused by backpressure).
    Idle,
    /// A multishot receive is in flight.
    Armed,
    /// A multishot receive is in flight and a cancel for it was sent (backpressure).
    Cancelling,
    /// The ring ran dry: queued for a re-arm when buffers come back.
    Waiting,
}

/// The iovecs and message header of a batched send; they must stay put while it is in flight.
pub struct Batch {
    pub msg: libc::msghdr,
    pub iov: [libc::iovec; MAX_IOV],
}

pub struct Dir {
    pub recv: Recv,
    /// The destination fell behind: receive one buffer at a time (single-shot) until the
    /// queue has drained, so a multishot burst cannot overshoot the backpressure bound.
    pub throttled: bool,
    /// The source ended (EOF received).
    pub eof: bool,
    /// The destination's write side was shut (EOF passed on).
    pub shut: bool,
    /// Received, not yet sent; the front one may be partly sent.
    pub queue: VecDeque<Chunk>,
    pub queued: usize,
    /// A send (of the front of `queue`) is in flight.
    pub sending: bool,
    pub batch: Option<Box<Batch>>,
}

impl Dir {
    fn new() -> Self {
        Dir {
            recv: Recv::Idle,
            throttled: false,
            eof: false,
            shut: false,
            queue: VecDeque::new(),
            queued: 0,
            sending: false,
            batch: None,
        }
    }

    /// Drops the first `n` sent bytes: whole chunks go (their buffers can go back), a partly
    /// sent one is advanced.
    pub fn consume(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let front = self.queue.front_mut().expect("sent more than was queued");
            if front.len() <= n {
                n -= front.len();
                self.queue.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Open,
    Closing,
}

pub struct Conn {
    /// Client socket, upstream socket (-1 once closed).
    pub fds: [RawFd; 2],
    pub state: State,
    pub dirs: [Dir; 2],
    /// Requests in flight that name this connection; the slot is freed at 0.
    pub inflight: u32,
    /// Bumped whenever the slot is reused, so stale queue entries can be told apart.
    pub gen: u16,
}

impl Conn {
    pub fn new(client: RawFd, upstream: RawFd, gen: u16) -> Self {
        Conn {
            fds: [client, upstream],
            state: State::Connecting,
            dirs: [Dir::new(), Dir::new()],
            inflight: 0,
            gen,
        }
    }

    /// The socket direction `d` receives from.
    pub fn src(&self, d: usize) -> RawFd {
        self.fds[d]
    }

    /// The socket direction `d` sends to.
    pub fn dst(&self, d: usize) -> RawFd {
        self.fds[1 - d]
    }
}
