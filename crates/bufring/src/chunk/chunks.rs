//! The chunks of one completion: one for a plain receive, one per buffer for a bundle. Each
//! [`Chunk`] is formed when it is taken; chunks never taken give their buffers back when the
//! [`Chunks`] is dropped.

use std::fmt;
use std::ptr::NonNull;

use super::{Chunk, Shared};

/// Where one buffer's part of a completion starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) bid: u16,
    pub(crate) offset: u32,
}

/// The chunks of one completion, in order: an iterator of [`Chunk`]s. A plain receive has one
/// chunk; a bundle one per buffer it filled (the first from where the previous data in that
/// buffer ended, the others from where their entries start). It forms each chunk as it is
/// taken; chunks not taken give their buffers back when it is dropped. A completion of one
/// buffer allocates nothing; a bundle of several keeps where its buffers start in one
/// allocation.
///
/// `Send` and `Sync` like a chunk.
pub struct Chunks {
    /// `Arc::as_ptr` of the pool's `Shared`, kept alive by the references the pieces hold.
    shared: NonNull<Shared>,
    /// The first buffer's piece.
    first: Piece,
    /// The other buffers' pieces, in order (`None` for one buffer: no allocation).
    rest: Option<Box<[Piece]>>,
    /// Index of the next piece to hand out (0: `first`).
    next: u16,
    /// Whether the final buffer stays with the kernel (its chunk is not the last).
    keep_final: bool,
    /// Bytes not yet handed out.
    left: u32,
    /// Bytes of the whole completion.
    total: u32,
    /// The pool's buffer length (kept here: reading it through `shared` needs a live piece).
    buf_len: u32,
}

// SAFETY: like `Chunk`: the pieces are disjoint ranges the kernel no longer writes, kept alive
// by one reference per piece; releasing is atomic.
unsafe impl Send for Chunks {}
// SAFETY: `&Chunks` only reads plain fields.
unsafe impl Sync for Chunks {}

impl Chunks {
    /// The chunks of `total` bytes laid over `first` and then `rest`.
    ///
    /// # Safety
    /// For each piece the caller holds one reference to its buffer, given to the chunk formed
    /// from it (or released on drop); the bytes fill each piece's buffer from its offset to the
    /// end of the buffer (`buf_len` bytes long), except the last piece, which takes what is
    /// left; every such range satisfies [`Chunk::new`]'s contract. `shared` is `Arc::as_ptr` of
    /// the pool's `Shared`. At most 32768 pieces (one per buffer).
    #[inline]
    pub(crate) unsafe fn new(
        shared: NonNull<Shared>,
        first: Piece,
        rest: Option<Box<[Piece]>>,
        total: u32,
        buf_len: u32,
        keep_final: bool,
    ) -> Self {
        Chunks {
            shared,
            first,
            rest,
            next: 0,
            keep_final,
            left: total,
            total,
            buf_len,
        }
    }

    /// Total bytes of the completion (the CQE's result).
    pub fn total_len(&self) -> usize {
        self.total as usize
    }

    /// Buffers the completion filled (1 unless it is a bundle).
    #[inline]
    pub fn buffers(&self) -> usize {
        1 + self.rest().len()
    }

    #[inline]
    fn rest(&self) -> &[Piece] {
        self.rest.as_deref().unwrap_or_default()
    }

    /// The only chunk of a one-buffer completion; a bundle of several buffers (or a completion
    /// whose chunk was taken) comes back unchanged.
    pub fn into_single(mut self) -> Result<Chunk, Chunks> {
        if self.rest.is_none() && self.next == 0 {
            Ok(self.next().expect("one piece"))
        } else {
            Err(self)
        }
    }

    /// Gives back the buffers of the chunks never taken.
    #[cold]
    fn release_untaken(&mut self) {
        let pieces = std::iter::once(self.first).chain(self.rest().iter().copied());
        for p in pieces.skip(self.next as usize) {
            // SAFETY: `shared` is the `Arc`'s pointer; this piece's reference is ours to give
            // up, and the references of the pieces after it (or, for the last, nothing more
            // touches `shared`) keep it alive until then.
            unsafe { Shared::release(self.shared.as_ptr(), p.bid) };
        }
        self.next = self.buffers() as u16;
    }
}

impl Iterator for Chunks {
    type Item = Chunk;

    #[inline]
    fn next(&mut self) -> Option<Chunk> {
        let i = self.next as usize;
        let (p, final_piece) = if i == 0 {
            (self.first, self.rest.is_none())
        } else {
            let rest = self.rest.as_deref()?;
            (*rest.get(i - 1)?, i == rest.len())
        };
        let len = if final_piece {
            self.left
        } else {
            self.left.min(self.buf_len - p.offset)
        };
        self.next += 1;
        self.left -= len;
        let last = !(final_piece && self.keep_final);
        // SAFETY: the piece's reference goes to the chunk; its range is what `new`'s caller
        // vouched for.
        Some(unsafe { Chunk::new(self.shared, p.bid, p.offset, len, last) })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.buffers() - self.next as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Chunks {}

impl Drop for Chunks {
    #[inline]
    fn drop(&mut self) {
        // The common case, a one-buffer completion whose chunk was taken, costs one test.
        if self.next == 0 || self.rest.is_some() {
            self.release_untaken();
        }
    }
}

impl fmt::Debug for Chunks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let untaken: Vec<Piece> = std::iter::once(self.first)
            .chain(self.rest().iter().copied())
            .skip(self.next as usize)
            .collect();
        f.debug_struct("Chunks")
            .field("total", &self.total)
            .field("pieces", &untaken)
            .finish()
    }
}
