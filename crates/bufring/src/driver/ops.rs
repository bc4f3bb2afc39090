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
        // Never 0, so that no user_data is 0 and a socket can keep one in 8 bytes; below 2^31,
        // so that no op's user_data looks like a receive's (`RECV_TAG`).
        slot.gen = (slot.gen.wrapping_add(1) & GEN_MASK).max(1);
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

/// Op generations stay below 2^31: the top bit of a user_data marks a receive.
const GEN_MASK: u32 = 0x7fff_ffff;

/// A receive's user_data names its socket, not an op slot: one receive is in flight per
/// connection, idle or not, and a slot each would cost 24 bytes per connection. The top bit
/// marks it; then whether it is multishot and limited, a 5-bit count of the socket's receives
/// (so that a completion of an earlier receive is told apart), the low 24 bits of the socket
/// slot's generation, and the slot.
pub(super) const RECV_TAG: u64 = 1 << 63;

/// What a receive's user_data says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecvUd {
    pub(super) sock: u32,
    pub(super) multishot: bool,
    pub(super) limited: bool,
}

/// The user_data of receive number `seq` (mod 32) of socket slot `sock` of generation `gen`.
pub(super) fn recv_ud(sock: u32, gen: u32, seq: u8, multishot: bool, limited: bool) -> u64 {
    RECV_TAG
        | u64::from(multishot) << 62
        | u64::from(limited) << 61
        | u64::from(seq & 0x1f) << 56
        | u64::from(gen & 0xff_ffff) << 32
        | u64::from(sock)
}

/// The receive `ud` names, if it is a receive's.
pub(super) fn parse_recv(ud: u64) -> Option<RecvUd> {
    (ud & RECV_TAG != 0).then_some(RecvUd {
        sock: ud as u32,
        multishot: ud & 1 << 62 != 0,
        limited: ud & 1 << 61 != 0,
    })
}

/// A user_data as the socket keeps it: [`Ops::insert`] never returns 0 (generations start at 1).
pub(super) fn nz(ud: u64) -> NonZeroU64 {
    NonZeroU64::new(ud).expect("user_data is never 0: generations start at 1")
}

pub(super) fn timespec(d: std::time::Duration) -> Box<Timespec> {
    Box::new(Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receive's user_data says what it was made from, and no op's looks like one (nor is 0),
    /// however often a slot is reused.
    #[test]
    fn receive_and_op_user_data_never_meet() {
        for (sock, gen, seq, m, l) in [
            (0, 0, 0, false, false),
            (u32::MAX, u32::MAX, 255, true, true),
            (7, 0x1234_5678, 33, true, false),
        ] {
            let ud = recv_ud(sock, gen, seq, m, l);
            assert_eq!(
                parse_recv(ud),
                Some(RecvUd {
                    sock,
                    multishot: m,
                    limited: l
                })
            );
            // Another generation of the slot, or another receive of the socket: another name.
            assert_ne!(ud, recv_ud(sock, gen.wrapping_add(1), seq, m, l));
            assert_ne!(ud, recv_ud(sock, gen, seq.wrapping_add(1), m, l));
        }
        let mut ops = Ops::default();
        for _ in 0..3 {
            let ud = ops.insert(Op::Provide);
            assert!(ud != 0 && parse_recv(ud).is_none());
            ops.remove(ud);
        }
        // A slot reused past 2^31 generations: still no top bit, still not 0.
        ops.slots[0].gen = GEN_MASK;
        let ud = ops.insert(Op::Provide);
        assert!(parse_recv(ud).is_none());
        ops.remove(ud);
        let ud = ops.insert(Op::Provide);
        assert_eq!(ud >> 32, 1, "wrapped to 1, not 0");
        assert!(parse_recv(u64::MAX).is_some() && parse_recv(0).is_none());
    }
}
