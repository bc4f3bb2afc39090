//! The buffer policy, applied once per batch of completions: publish, adjust the posted
//! target (elastic posting), re-arm waiting receives first come first served, spill when the
//! pool is dry, ask for a wake-up, and report idle sockets.

use super::*;

impl Driver {
    pub(super) fn after_batch(&mut self) {
        let now = self.now;
        for pi in 0..self.pools.len() {
            self.settle_pool(pi);
        }
        if now >= self.window_start + self.cfg.window {
            self.window_start = now;
            for p in &mut self.pools {
                if let Some(t) = p.elastic.on_window() {
                    p.pool.set_posted_target(t);
                    self.stats.target_changes += 1;
                }
                p.pool.trim_idle();
            }
        }
        if self.next_idle_check.is_some_and(|t| now >= t) {
            self.check_idle(now);
        }
        if self.accept_retry.is_some_and(|t| now >= t) {
            self.resume_accepts();
        }
    }

    /// Publishes returned buffers, adjusts the posted target, starts waiting receives again
    /// (first come, first served), spills when nothing else can free a buffer, and asks for a
    /// wake-up when receives still wait.
    pub(super) fn settle_pool(&mut self, pi: usize) {
        for _round in 0..3 {
            let p = &mut self.pools[pi];
            p.pool.publish();
            let starved = std::mem::take(&mut p.starved);
            if let Some(t) = p.elastic.on_batch(p.pool.unused(), starved) {
                p.pool.set_posted_target(t);
                p.pool.publish();
                self.stats.target_changes += 1;
            }
            self.provide(pi);
            self.rearm_waiting(pi);
            let p = &mut self.pools[pi];
            if p.waiting.is_empty() {
                p.dry_since = None;
                return;
            }
            let s = p.pool.stats();
            if p.pool.unused() == 0 && s.parked == 0 && s.posted_target == s.buffers {
                // Dry: every buffer is with the application or partly filled. Once that has
                // lasted the grace period, free some.
                let since = *p.dry_since.get_or_insert(self.now);
                if self.now >= since + self.cfg.spill_after {
                    self.spill(pi);
                    if self.pools[pi].pool.has_returns() {
                        self.pools[pi].dry_since = None;
                        continue;
                    }
                }
            } else {
                p.dry_since = None;
            }
            if self.pools[pi].pool.want_wake() {
                return;
            }
            // Buffers came back meanwhile: go round again.
        }
    }

    /// A legacy pool's published buffers go to the kernel as PROVIDE_BUFFERS SQEs, ahead of
    /// the receives that follow (a ring pool has none).
    pub(super) fn provide(&mut self, pi: usize) {
        let mut sqes = Vec::new();
        self.pools[pi].pool.provide(|e| {
            sqes.push(e);
            true
        });
        for e in sqes {
            let ud = self.ops.insert(Op::Provide);
            // SAFETY: the SQE hands the kernel buffers of a pool that lives as long as the
            // driver (whose drop takes them back with REMOVE_BUFFERS, or leaks the pool).
            unsafe { self.push(e.user_data(ud)) };
        }
    }

    /// Starts receives that waited for buffers, in the order they ran out, as many as the
    /// buffers the kernel has left can feed.
    pub(super) fn rearm_waiting(&mut self, pi: usize) {
        let p = &self.pools[pi];
        let unused = p.pool.unused() as usize;
        let mut budget = if p.pool.is_incremental() {
            unused * 8
        } else {
            unused
        };
        while budget > 0 {
            let Some((idx, gen)) = self.pools[pi].waiting.pop_front() else {
                break;
            };
            let slot = &self.sockets[idx as usize];
            let valid = slot.gen == gen
                && slot
                    .sock
                    .as_ref()
                    .is_some_and(|s| !s.closing && s.recv == RecvState::Waiting);
            if !valid {
                continue;
            }
            if self.held(idx) >= self.quota(pi) {
                // Over its quota meanwhile (a spill made room in the pool, not in its queue):
                // it waits for its reader, not for buffers.
                self.at(idx).recv = RecvState::Paused;
                self.watch(idx);
                continue;
            }
            self.stats.rearms_after_wait += 1;
            self.arm_recv(idx);
            budget -= 1;
        }
    }

    /// Moves chunks the driver holds to the heap, largest holder first, until a buffer of pool
    /// `pi` comes back. If none does, cancels sends in flight that hold pool chunks, so that
    /// theirs can move when they complete.
    pub(super) fn spill(&mut self, pi: usize) {
        let mut holders: Vec<(usize, u32)> = self
            .sockets
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.sock.as_ref().map(|s| (s.pool_bytes(), i as u32)))
            .filter(|&(b, _)| b > 0)
            .collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        // Enough for the receives waiting (up to 16 buffers' worth), not everything: each
        // spill is a copy.
        let p = &self.pools[pi];
        let want = p.waiting.len().min(16) * p.pool.buf_len() as usize;
        let mut copied = 0;
        for &(_, idx) in &holders {
            let Some(io) = self.at(idx).io.as_mut() else {
                continue;
            };
            let (chunks, bytes) = io.spill();
            self.stats.spilled_chunks += chunks as u64;
            self.stats.spilled_bytes += bytes as u64;
            copied += bytes;
            if copied >= want && self.pools[pi].pool.has_returns() {
                return;
            }
        }
        if self.pools[pi].pool.has_returns() {
            return;
        }
        for &(_, idx) in &holders {
            let sock = self.at(idx);
            let Some(io) = sock.io.as_ref() else { continue };
            if io.sending > 0
                && !sock.spill_cancel
                && io.tx.iter().take(io.sending).any(|c| c.in_pool())
            {
                let ud = io.send_op.expect("a send is in flight").get();
                sock.spill_cancel = true;
                self.stats.spill_cancels += 1;
                self.cancel(ud, Some(idx));
            }
        }
    }

    pub(super) fn check_idle(&mut self, now: Instant) {
        self.next_idle_check = None;
        if self.idle_sockets == 0 {
            return;
        }
        // In the sockets' own time: nanoseconds since the driver was built.
        let now = self.stamp(now);
        const MS: u64 = 1_000_000;
        let mut next: Option<u64> = None;
        for idx in 0..self.sockets.len() as u32 {
            let Some(sock) = self.sockets[idx as usize].sock.as_mut() else {
                continue;
            };
            if sock.idle_ms == 0 || sock.closing {
                continue;
            }
            let t = u64::from(sock.idle_ms) * MS;
            if !sock.idle_signalled && now >= sock.active + t {
                // Bytes leaving the kernel's send queue are bytes moving too: a peer reading a
                // large answer slowly out of it is not idle. One that stopped reading is, a
                // timeout later.
                let outq = sock
                    .fd
                    .as_ref()
                    .map_or(0, |f| unsent_in_kernel(f.as_raw_fd()));
                let drained = outq > 0 && outq < sock.idle_outq;
                sock.idle_outq = outq;
                if drained {
                    sock.active = now;
                    let check = now + t;
                    next = Some(next.map_or(check, |n| n.min(check)));
                    continue;
                }
                sock.idle_signalled = true;
                self.stats.idle_timeouts += 1;
                let id = self.id_of(idx);
                self.events.push_back(Event::Idle { socket: id });
            }
            let sock = self.sockets[idx as usize].sock.as_ref().expect("live");
            let check = if sock.idle_signalled {
                now + (t / 4).max(10 * MS)
            } else {
                (sock.active + t).max(now + MS)
            };
            next = Some(next.map_or(check, |n| n.min(check)));
        }
        self.next_idle_check = next.map(|n| self.instant(n));
    }
}

/// Bytes the kernel holds in `fd`'s send queue, not yet acknowledged by the peer (SIOCOUTQ);
/// 0 where it cannot say.
fn unsent_in_kernel(fd: RawFd) -> u32 {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ on sockets) writes one int into the live `n`.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if r == 0 {
        n.max(0) as u32
    } else {
        0
    }
}
