//! One worker thread: a [`Driver`] (its io_uring and its pool) and an SO_REUSEPORT listener.
//! This is all the connection logic of the proxy; the driver does the io_uring work (every
//! request, every completion, buffer policy, spills, timeouts). A pair is a client socket and
//! its upstream socket; each event names one socket, and its side says which pair and peer.
//!
//! Forwarding moves chunks from a socket's receive queue to its peer's send queue, no copy,
//! while the peer has less unsent than its room: the receive quota (the socket's fair share of
//! the pool, see the driver's docs), at most `max_unsent`. Past that, chunks wait in the
//! receive queue; [`Event::Sent`] on the peer starts forwarding again. The two sockets of a
//! pair are [linked](Driver::link), so the driver stops a side's receive once its receive
//! queue and its peer's unsent bytes together reach its quota, and starts it again as the
//! sends go out. So each direction holds about one quota: with a few connections,
//! multi-megabyte batches; with many backed up, a slice of the pool each.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bufring::driver::{Driver, Event, ListenerId, PoolId, Received, SocketId, TimerId};
use bufring::{Chunk, Pool};

use super::net;
use super::{Config, Shared, Started, ThreadStats, DRAIN, FORCE};

/// One socket of a pair.
struct Side {
    id: SocketId,
    peer: SocketId,
    /// The socket the proxy connected (the other is the client).
    upstream: bool,
    /// Its stream ended (the end was read and passed on as a shutdown of the peer).
    ended: bool,
    /// Reset (with its peer): only `Closed` is to come.
    aborted: bool,
}

pub struct Worker {
    driver: Driver,
    pool: PoolId,
    id: usize,
    shared: Arc<Shared>,
    listener: Option<ListenerId>,
    upstream: SocketAddr,
    /// Both sockets of every pair, by [`SocketId::slot`].
    sides: Vec<Option<Side>>,
    /// Pairs on this thread (from accept to the second socket's `Closed`).
    live: usize,
    max_connections: usize,
    max_unsent: usize,
    buf_size: usize,
    connect_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    drain_timeout: Duration,
    draining: bool,
    drain_timer: Option<TimerId>,
    /// Chunks on their way from a receive queue to a send queue (kept for its capacity).
    batch: Vec<Chunk>,
    stats: ThreadStats,
}

impl Worker {
    /// Makes the driver and its pool, and starts accepting; reports to `started` what the
    /// kernel gave (the pool's mode), or the error.
    pub fn new(
        id: usize,
        cfg: &Config,
        listener: TcpListener,
        shared: Arc<Shared>,
        started: &mpsc::Sender<Result<Started, String>>,
    ) -> Option<Worker> {
        let made = (|| -> Result<(Driver, PoolId), String> {
            // A receive queue only waits for room in the peer's send queue. The quota is at
            // most --max-unsent (less when many share the pool), and with the pair linked it
            // covers both queues of a direction: a direction holds at most about that.
            let mut driver = Driver::builder()
                .recv_quota(cfg.max_unsent.min(64 * 1024), cfg.max_unsent)
                .build()
                .map_err(|e| format!("io_uring driver: {e}"))?;
            let pool = driver
                .add_pool(
                    Pool::builder(0)
                        .count(cfg.buffers as usize)
                        .buf_len(cfg.buf_size as usize)
                        .incremental(cfg.incremental)
                        .bundles(cfg.bundles),
                )
                .map_err(|e| format!("buffer pool: {e}"))?;
            Ok((driver, pool))
        })();
        let (mut driver, pool) = match made {
            Ok(m) => m,
            Err(e) => {
                let _ = started.send(Err(e));
                return None;
            }
        };
        let listener = match driver.listen(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = started.send(Err(format!("accept: {e}")));
                return None;
            }
        };
        let p = driver.pool(pool).expect("the pool just added");
        let _ = started.send(Ok(Started {
            waker: driver.waker(),
            incremental: p.incremental(),
            bundles: cfg.bundles,
        }));
        Some(Worker {
            driver,
            pool,
            id,
            shared,
            listener: Some(listener),
            upstream: cfg.upstream,
            sides: Vec::new(),
            live: 0,
            max_connections: cfg.max_connections,
            max_unsent: cfg.max_unsent,
            buf_size: cfg.buf_size as usize,
            connect_timeout: cfg.connect_timeout,
            idle_timeout: cfg.idle_timeout,
            drain_timeout: cfg.drain_timeout,
            draining: false,
            drain_timer: None,
            batch: Vec::new(),
            stats: ThreadStats::default(),
        })
    }

    /// Runs until a shutdown was asked for and every pair is gone.
    pub fn run(mut self) -> std::io::Result<()> {
        // A signal may have come before this thread had its driver.
        self.check_control();
        loop {
            self.publish_stats();
            if self.draining && self.live == 0 {
                break;
            }
            self.driver
                .run_once(None)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            while let Some(ev) = self.driver.next_event() {
                self.on_event(ev);
            }
        }
        self.publish_stats();
        Ok(())
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Accepted { socket, .. } => self.accept(socket),
            Event::Connected { socket, result } => match result {
                Ok(()) => self.connected(socket),
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        self.stats.connect_timeouts += 1;
                    }
                    self.stats.upstream_failed += 1;
                    self.abort(socket);
                }
            },
            Event::Readable { socket } => self.forward(socket),
            Event::Sent { socket } => {
                // Room again on `socket`: forward what its peer has queued.
                if let Some(peer) = self.side(socket).map(|s| s.peer) {
                    self.forward(peer);
                }
            }
            Event::SendFailed { socket, .. } | Event::Failed { socket, .. } => {
                self.stats.resets += 1;
                self.abort(socket);
            }
            Event::Idle { socket } => {
                // Idle only if nothing moved on either socket of the pair for the timeout
                // (a slow download keeps the client's side busy while the upstream's waits).
                let (Some(t), Some(peer)) = (self.idle_timeout, self.side(socket).map(|s| s.peer))
                else {
                    return;
                };
                if self.driver.idle_for(peer).map_or(true, |d| d >= t) {
                    self.stats.idle_closed += 1;
                    self.abort(socket);
                }
            }
            Event::Closed { socket } => self.closed(socket),
            Event::Timer { timer } if Some(timer) == self.drain_timer => self.force(),
            Event::AcceptFailed { error, .. } => {
                self.stats.accept_errors += 1;
                eprintln!(
                    "bufring proxy: thread {}: accepting failed: {error}",
                    self.id
                );
            }
            Event::Woken => self.check_control(),
            _ => {}
        }
    }

    fn side(&self, s: SocketId) -> Option<&Side> {
        self.sides
            .get(s.slot())
            .and_then(Option::as_ref)
            .filter(|side| side.id == s)
    }

    fn side_mut(&mut self, s: SocketId) -> Option<&mut Side> {
        self.sides
            .get_mut(s.slot())
            .and_then(Option::as_mut)
            .filter(|side| side.id == s)
    }

    fn set_side(&mut self, side: Side) {
        let slot = side.id.slot();
        if self.sides.len() <= slot {
            self.sides.resize_with(slot + 1, || None);
        }
        self.sides[slot] = Some(side);
    }

    // ---- a pair's life ------------------------------------------------------------------

    fn accept(&mut self, client: SocketId) {
        if self.draining {
            let _ = self.driver.close(client);
            return;
        }
        if self.shared.active.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.shared.active.fetch_sub(1, Ordering::AcqRel);
            self.stats.refused_limit += 1;
            let _ = self.driver.close(client);
            return;
        }
        self.stats.accepted += 1;
        let upstream = match self.driver.connect(self.upstream, self.connect_timeout) {
            Ok(u) => u,
            Err(_) => {
                // No socket for the upstream (out of descriptors): the client learns at once.
                self.shared.active.fetch_sub(1, Ordering::AcqRel);
                self.stats.upstream_failed += 1;
                let _ = self.driver.reset(client);
                return;
            }
        };
        for s in [client, upstream] {
            if let Ok(fd) = self.driver.fd(s) {
                let _ = net::set_nodelay(fd.as_raw_fd());
            }
        }
        // What one side received and queued to send on the other counts against the first's
        // receive quota until it is sent: one share per direction, not two. (Both are fresh
        // sockets: the link cannot fail.)
        let _ = self.driver.link(client, upstream);
        self.set_side(Side {
            id: client,
            peer: upstream,
            upstream: false,
            ended: false,
            aborted: false,
        });
        self.set_side(Side {
            id: upstream,
            peer: client,
            upstream: true,
            ended: false,
            aborted: false,
        });
        self.live += 1;
    }

    /// The upstream is connected: both sides receive (the client's only now, so that a pair
    /// whose upstream never answers holds no buffers).
    fn connected(&mut self, upstream: SocketId) {
        let Some(client) = self.side(upstream).map(|s| s.peer) else {
            return;
        };
        for s in [client, upstream] {
            if self.driver.recv(s, self.pool).is_err()
                || self.driver.set_idle_timeout(s, self.idle_timeout).is_err()
            {
                self.abort(s);
                return;
            }
        }
    }

    /// Moves what `src` received to its peer's send queue, as far as the peer's room allows;
    /// passes an end of stream on as a shutdown, and an error as a reset of both.
    fn forward(&mut self, src: SocketId) {
        let Some(side) = self.side(src) else { return };
        let dst = side.peer;
        let Ok(mut unsent) = self.driver.unsent(dst) else {
            return;
        };
        // A fair share, like the receive quota: a few busy pairs get room for big batches,
        // many backed-up ones (slow readers) a slice of the pool each.
        let room = self
            .driver
            .recv_quota(self.pool)
            .map_or(self.max_unsent, |q| q.min(self.max_unsent))
            .max(self.buf_size);
        let mut batch = std::mem::take(&mut self.batch);
        let mut end = None;
        loop {
            match self.driver.peek_len(src) {
                Ok(Some(len)) => {
                    if unsent + len > room && unsent > 0 {
                        // Full: the rest waits in the receive queue until `Sent` on `dst`.
                        self.stats.backpressure_pauses += 1;
                        break;
                    }
                    if let Ok(Some(Received::Data(c))) = self.driver.read(src) {
                        unsent += c.len();
                        batch.push(c);
                    }
                }
                Ok(None) => {
                    end = self.driver.read(src).ok().flatten();
                    break;
                }
                Err(_) => break,
            }
        }
        let bytes: usize = batch.iter().map(Chunk::len).sum();
        if bytes > 0 {
            if self.side(dst).is_some_and(|d| d.upstream) {
                self.stats.bytes_up += bytes as u64;
            } else {
                self.stats.bytes_down += bytes as u64;
            }
            self.stats.peak_unsent = self.stats.peak_unsent.max(unsent as u64);
            if self.driver.send_all(dst, batch.drain(..)).is_err() {
                batch.clear();
                self.batch = batch;
                self.abort(src);
                return;
            }
        }
        self.batch = batch;
        match end {
            Some(Received::End) => {
                // Half-close: the peer reads the end once everything before it is sent.
                let _ = self.driver.shutdown(dst);
                if let Some(side) = self.side_mut(src) {
                    side.ended = true;
                }
                if self.side(dst).is_some_and(|s| s.ended) {
                    // Both ways ended: close both once their queues are sent.
                    let _ = self.driver.close(src);
                    let _ = self.driver.close(dst);
                }
            }
            Some(Received::Error(_)) => {
                self.stats.resets += 1;
                self.abort(src);
            }
            _ => {}
        }
    }

    /// Ends the pair of `s` with a reset on both sockets (SO_LINGER 0): neither peer can take a
    /// cut stream for a complete one.
    fn abort(&mut self, s: SocketId) {
        let peer = self.side(s).map(|side| side.peer);
        for x in std::iter::once(s).chain(peer) {
            if let Some(side) = self.side_mut(x) {
                side.aborted = true;
            }
            let _ = self.driver.reset(x);
        }
    }

    fn closed(&mut self, s: SocketId) {
        let Some(side) = self
            .sides
            .get_mut(s.slot())
            .and_then(|x| x.take_if(|x| x.id == s))
        else {
            return;
        };
        if self.side(side.peer).is_none() {
            // The second socket of the pair: the pair is gone.
            self.live -= 1;
            self.stats.closed += 1;
            self.shared.active.fetch_sub(1, Ordering::AcqRel);
        }
    }

    // ---- control ------------------------------------------------------------------------

    /// Acts on what the handle asked for (drain, force, dump).
    fn check_control(&mut self) {
        if self.shared.dump[self.id].swap(false, Ordering::AcqRel) {
            eprintln!(
                "thread {}: {} pairs, {}\n{}",
                self.id,
                self.live,
                self.stats,
                self.driver.dump()
            );
        }
        let state = self.shared.state.load(Ordering::Acquire);
        if state >= DRAIN && !self.draining {
            self.draining = true;
            if let Some(l) = self.listener.take() {
                let _ = self.driver.close_listener(l);
            }
            self.drain_timer = Some(self.driver.timer(self.drain_timeout));
        }
        if state >= FORCE {
            self.force();
        }
    }

    /// Resets every pair now.
    fn force(&mut self) {
        let ids: Vec<SocketId> = self.sides.iter().flatten().map(|s| s.id).collect();
        for s in ids {
            if self.side(s).is_some_and(|side| !side.aborted) {
                self.stats.forced += 1;
                self.abort(s);
            }
        }
    }

    fn publish_stats(&mut self) {
        self.stats.active = self.live as u64;
        if let Ok(p) = self.driver.pool(self.pool) {
            self.stats.pool = p.stats();
        }
        self.stats.driver = self.driver.stats();
        self.stats.recv_limited = u64::from(self.driver.recv_limited());
        if let Ok(mut s) = self.shared.stats[self.id].lock() {
            *s = self.stats;
            s.backpressure_pauses += s.driver.quota_pauses;
        }
    }
}
