//! The ledger: for every buffer, whether the kernel holds it, where the next byte lands in it
//! (its cursor) and at which ring position its entry sits; and our copy of the ring order
//! (which bid was written at which position), which splits bundles. Nothing else in the crate
//! touches this state: the pool changes it through the handful of operations below, one per
//! step in the life of a buffer (post, place, check, consume, retire).

use crate::error::BadCompletion;

/// One buffer's state.
#[derive(Debug, Clone, Copy, Default)]
struct Buf {
    /// Where the kernel's entry for the buffer starts: where the next byte lands.
    cursor: u32,
    /// The ring position (unwrapped 16-bit index) of its entry, while the kernel holds it.
    pos: u16,
    /// Posted and not yet retired.
    in_kernel: bool,
}

pub(crate) struct Ledger {
    bufs: Box<[Buf]>,
    /// Per ring slot (position & mask): the bid written there last.
    order: Box<[u16]>,
    mask: u16,
    /// The lowest ring position the kernel may still select, as far as completions tell.
    head: u16,
}

impl Ledger {
    /// `count` buffers, none posted, over a ring (or legacy list) of `slots` positions whose
    /// first position is `start`.
    pub(crate) fn new(count: usize, slots: usize, start: u16) -> Self {
        debug_assert!(slots.is_power_of_two() && slots >= count);
        Ledger {
            bufs: vec![Buf::default(); count].into_boxed_slice(),
            order: vec![0; slots].into_boxed_slice(),
            mask: (slots - 1) as u16,
            head: start,
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.bufs.len()
    }

    #[inline]
    pub(crate) fn cursor(&self, bid: u16) -> u32 {
        self.bufs[bid as usize].cursor
    }

    #[inline]
    pub(crate) fn in_kernel(&self, bid: u16) -> bool {
        self.bufs[bid as usize].in_kernel
    }

    #[inline]
    pub(crate) fn pos(&self, bid: u16) -> u16 {
        self.bufs[bid as usize].pos
    }

    pub(crate) fn head(&self) -> u16 {
        self.head
    }

    /// The bid written at ring position `pos`.
    #[inline]
    pub(crate) fn at(&self, pos: u16) -> u16 {
        self.order[(pos & self.mask) as usize]
    }

    /// Buffer `bid` goes to the kernel from `offset` on (its entry is being written).
    #[inline]
    pub(crate) fn post(&mut self, bid: u16, offset: u32) {
        let b = &mut self.bufs[bid as usize];
        b.cursor = offset;
        b.in_kernel = true;
    }

    /// Buffer `bid`'s entry sits at ring position `pos`.
    #[inline]
    pub(crate) fn place(&mut self, bid: u16, pos: u16) {
        self.bufs[bid as usize].pos = pos;
        self.order[(pos & self.mask) as usize] = bid;
    }

    /// Whether a completion may name `bid`: one of ours, held by the kernel, with its entry
    /// published (`tail` is the published tail: positions from it back, one per buffer).
    #[inline]
    pub(crate) fn check(&self, bid: u16, tail: u16) -> Result<(), BadCompletion> {
        let Some(b) = self.bufs.get(bid as usize) else {
            return Err(BadCompletion::BidOutOfRange {
                bid,
                count: self.bufs.len() as u16,
            });
        };
        // Positions from the tail back: 1 to `count` (one entry per buffer at most).
        let ahead = tail.wrapping_sub(b.pos).wrapping_sub(1);
        if !b.in_kernel || ahead as usize >= self.bufs.len() {
            return Err(BadCompletion::BidNotHeldByKernel { bid });
        }
        Ok(())
    }

    /// The kernel consumed buffer `bid`'s entry up to `entry_done` (it moved its head past
    /// it) or not: our copy of the head follows the furthest position proven consumed.
    #[inline]
    pub(crate) fn consumed(&mut self, bid: u16, entry_done: bool) {
        let pos = self.bufs[bid as usize].pos;
        let next = if entry_done { pos.wrapping_add(1) } else { pos };
        if (next.wrapping_sub(self.head) as i16) > 0 {
            self.head = next;
        }
    }

    /// The kernel keeps buffer `bid` current; the next byte lands at `cursor`.
    #[inline]
    pub(crate) fn advance(&mut self, bid: u16, cursor: u32) {
        self.bufs[bid as usize].cursor = cursor;
    }

    /// The kernel retired buffer `bid`: it is the application's until posted again.
    #[inline]
    pub(crate) fn retire(&mut self, bid: u16) {
        let b = &mut self.bufs[bid as usize];
        b.cursor = 0;
        b.in_kernel = false;
    }

    /// The bids the kernel holds.
    pub(crate) fn held(&self) -> impl Iterator<Item = u16> + '_ {
        self.bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| b.in_kernel)
            .map(|(bid, _)| bid as u16)
    }
}
