//! Requests in flight on the driver's ring: a slab of operations, each named in its SQE's
//! user_data by slot and generation. An entry lives until its request's last completion, and
//! owns whatever the kernel reads or writes meanwhile (addresses, timespecs, the eventfd word);
//! a CQE whose user_data names a free slot or an older generation is stray and goes nowhere.

use std::num::NonZeroU64;

use io_uring::types::Timespec;

/// What a request is, and what it keeps alive for the kernel.
pub(super) enum Op {
    /// Multishot accept on listener slot `listener`.
    Accept { listener: u32 },
    /// Connect of socket `sock`; the kernel reads the address.
    Connect {
        sock: u32,
        _addr: Box<(libc::sockaddr_storage, libc::socklen_t)>,
    },
    /// The linked timeout of a connect; the kernel reads the timespec.
    ConnectTimeout { _ts: Box<Timespec> },
    /// A receive of socket `sock` from pool `pool`: multishot or not, with a byte limit or not.
    Recv {
        sock: u32,
        pool: u32,
        multishot: bool,
        limited: bool,
    },
    /// A send of the front of socket `sock`'s queue (the chunks stay in the queue, and the
    /// message header in the socket, until this completes).
    Send { sock: u32 },
    /// The error watch on socket `sock` while its receive is stopped (a poll for POLLERR).
    Watch { sock: u32 },
    /// A cancel on behalf of socket `sock` (counted in its in-flight requests), or of nothing.
    Cancel { sock: Option<u32> },
    /// A user timer; the kernel reads the timespec.
    Timer { _ts: Box<Timespec> },
    /// The removal of a user timer.
    TimerRemove,
    /// PROVIDE_BUFFERS of a legacy pool (the pool, which lives as long as the driver, holds the
    /// memory).
    Provide,
    /// REMOVE_BUFFERS of legacy pool `pool`, when the driver goes.
    RemoveBuffers { pool: usize },
    /// The read of the driver's eventfd; the kernel writes the word.
    Wake { _word: Box<u64> },
}

struct Slot {
    gen: u32,
    op: Option<Op>,
}

/// The operations in flight.
#[derive(Default)]
pub(super) struct Ops {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
}

impl Ops {
    /// Stores `op`; returns the user_data that names it.
    pub(super) fn insert(&mut self, op: Op) -> u64 {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { gen: 1, op: None });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[idx as usize];
        slot.op = Some(op);
        self.live += 1;
        u64::from(slot.gen) << 32 | u64::from(idx)
    }

    /// The live operation `user_data` names, if any.
    pub(super) fn get(&self, user_data: u64) -> Option<&Op> {
        let slot = self.slots.get(user_data as u32 as usize)?;
        if slot.gen != (user_data >> 32) as u32 {
            return None;
        }
        slot.op.as_ref()
    }

    /// Ends the operation `user_data` names (its last completion arrived) and returns it.
    pub(super) fn remove(&mut self, user_data: u64) -> Option<Op> {
        let idx = user_data as u32;
        let slot = self.slots.get_mut(idx as usize)?;
        if slot.gen != (user_data >> 32) as u32 {
            return None;
        }
        let op = slot.op.take()?;
        // Never 0, so that no user_data is 0 and a socket can keep one in 8 bytes.
        slot.gen = slot.gen.wrapping_add(1).max(1);
        self.free.push(idx);
        self.live -= 1;
        Some(op)
    }

    /// Operations in flight.
    pub(super) fn live(&self) -> usize {
        self.live
    }

    /// The user_data of every operation in flight.
    pub(super) fn user_data(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.op.is_some())
            .map(|(i, s)| u64::from(s.gen) << 32 | i as u64)
    }

    /// Every operation still in flight (when the driver gives up waiting for them and leaks).
    pub(super) fn drain(&mut self) -> impl Iterator<Item = Op> + '_ {
        self.live = 0;
        self.slots.iter_mut().filter_map(|s| s.op.take())
    }
}

/// A user_data as the socket keeps it: [`Ops::insert`] never returns 0 (generations start at 1).
pub(super) fn nz(ud: u64) -> NonZeroU64 {
    NonZeroU64::new(ud).expect("user_data is never 0: generations start at 1")
}

pub(super) fn timespec(d: std::time::Duration) -> Box<Timespec> {
    Box::new(Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos()))
}
