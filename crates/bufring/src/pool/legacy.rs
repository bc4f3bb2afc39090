//! Legacy provided buffers (IORING_OP_PROVIDE_BUFFERS, Linux 5.7) for kernels without buffer
//! rings: the pool cannot write a ring, so buffers go to the kernel through SQEs it hands to
//! the user, batched (one SQE per run of consecutive whole buffers), and the user's ring stays
//! the user's.

use io_uring::{opcode, squeue};

use super::{Feed, Pool};

/// Legacy provided buffers: what waits to be handed to the user as PROVIDE_BUFFERS SQEs.
pub(crate) struct Legacy {
    pub(crate) bgid: u16,
    /// Bids posted but not yet handed out as SQEs (capacity `count`, never reallocated).
    pub(crate) staged: Vec<u16>,
    /// Entries handed out as SQEs, ever.
    pub(crate) handed: u64,
    /// Entries the kernel gave back to REMOVE_BUFFERS, ever.
    pub(crate) removed: u64,
    /// Position of the next buffer handed out: the kernel's list is first in, first out, so
    /// positions give its order, as ring positions do.
    pub(crate) tail: u16,
    /// `positions - 1`.
    pub(crate) mask: u16,
}

impl Legacy {
    pub(crate) fn new(bgid: u16, count: usize) -> Self {
        Legacy {
            bgid,
            staged: Vec::with_capacity(count),
            handed: 0,
            removed: 0,
            tail: 0,
            mask: (count.next_power_of_two() - 1) as u16,
        }
    }
}

impl Pool {
    /// Legacy pools: hands the buffers waiting for the kernel (after [`build`] and after each
    /// [`publish`](Self::publish)) to `push` as PROVIDE_BUFFERS SQEs, one per run of
    /// consecutive whole buffers, and returns how many SQEs went. `push` returns `false` when
    /// it could not take the SQE (a full submission queue): the rest waits for the next call.
    /// Set a `user_data` on the SQEs to recognise their CQEs (result 0, or an error such as
    /// -ENOMEM that leaves those buffers out of the kernel's reach).
    ///
    /// Ring pools have nothing to provide: it returns 0 at once.
    ///
    /// # Safety of the SQEs
    /// The SQEs give the kernel the pool's memory: submitting them is covered by the pool's
    /// in-flight contract (see [`Pool`]); dropping a pool whose buffers the kernel may hold
    /// keeps its memory mapped for good unless [`remove_buffers`](Self::remove_buffers) ran.
    ///
    /// [`build`]: crate::PoolBuilder::build
    pub fn provide(&mut self, mut push: impl FnMut(squeue::Entry) -> bool) -> u32 {
        let Feed::Legacy(l) = &mut self.feed else {
            return 0;
        };
        let staged = &mut l.staged;
        if staged.is_empty() {
            return 0;
        }
        // Sorting in place needs no memory; runs of consecutive bids become one SQE.
        staged.sort_unstable();
        let buf_len = self.shared.buf_len;
        let mut sqes = 0;
        let mut done = 0;
        while done < staged.len() {
            let bid = staged[done];
            let offset = self.ledger.cursor(bid);
            let mut run = 1;
            if offset == 0 {
                while done + run < staged.len()
                    && run < u16::MAX as usize
                    && staged[done + run] == bid.wrapping_add(run as u16)
                    && self.ledger.cursor(staged[done + run]) == 0
                {
                    run += 1;
                }
            }
            let addr = self.shared.buf_addr(bid).wrapping_add(offset as usize);
            let sqe = opcode::ProvideBuffers::new(
                addr,
                (buf_len - offset) as i32,
                run as u16,
                l.bgid,
                bid,
            )
            .build();
            if !push(sqe) {
                break;
            }
            sqes += 1;
            for k in 0..run {
                let b = staged[done + k];
                self.ledger.place(b, l.tail);
                l.tail = l.tail.wrapping_add(1);
            }
            done += run;
            l.handed += run as u64;
        }
        staged.drain(..done);
        sqes
    }

    /// Legacy pools: the REMOVE_BUFFERS SQE that takes back every buffer the kernel still holds
    /// (`None` for ring pools, or when it holds none). Submit it once no request selects from
    /// the pool any more, then report its result to
    /// [`buffers_removed`](Self::buffers_removed); the pool can then free its memory on drop.
    pub fn remove_buffers(&self) -> Option<squeue::Entry> {
        match &self.feed {
            Feed::Legacy(l) if self.legacy_provided() > 0 => Some(
                opcode::RemoveBuffers::new(
                    self.legacy_provided().min(u16::MAX as u64) as u16,
                    l.bgid,
                )
                .build(),
            ),
            _ => None,
        }
    }

    /// Legacy pools: the result of the [`remove_buffers`](Self::remove_buffers) SQE (how many
    /// buffers the kernel gave up, or an error).
    pub fn buffers_removed(&mut self, result: i32) {
        if let Feed::Legacy(l) = &mut self.feed {
            if result > 0 {
                l.removed += result as u64;
            }
        }
    }
}

impl Pool {
    /// Legacy pools: entries the kernel may hold: handed out as SQEs, not given back to
    /// REMOVE_BUFFERS and not yet seen in a completion (every completion of a legacy buffer
    /// retires it or, emulating incremental consumption, stages its rest again). Derived, so
    /// the completion path keeps no count of its own.
    pub(crate) fn legacy_provided(&self) -> u64 {
        match &self.feed {
            Feed::Legacy(l) => l.handed.saturating_sub(
                l.removed + self.stats.buffers_retired + self.stats.emulated_reposts,
            ),
            Feed::Ring(_) => 0,
        }
    }
}
