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

/// Pieces a completion can carry without allocating: a plain receive has one, most bundles a
/// few. Longer bundles (each piece a whole buffer of data) take one allocation.
const INLINE: usize = 4;

/// The pieces of one completion, in order.
#[derive(Clone)]
pub(crate) enum Pieces {
    Inline { n: u8, at: [Piece; INLINE] },
    Heap(Vec<Piece>),
}

impl Pieces {
    #[inline]
    pub(crate) fn one(p: Piece) -> Self {
        let mut at = [Piece::default(); INLINE];
        at[0] = p;
        Pieces::Inline { n: 1, at }
    }

    #[inline]
    pub(crate) fn push(&mut self, p: Piece) {
        match self {
            Pieces::Inline { n, at } if (*n as usize) < INLINE => {
                at[*n as usize] = p;
                *n += 1;
            }
            Pieces::Inline { at, .. } => {
                let mut v = Vec::with_capacity(INLINE * 4);
                v.extend_from_slice(at);
                v.push(p);
                *self = Pieces::Heap(v);
            }
            Pieces::Heap(v) => v.push(p),
        }
    }

    #[inline]
    pub(crate) fn as_slice(&self) -> &[Piece] {
        match self {
            Pieces::Inline { n, at } => &at[..*n as usize],
            Pieces::Heap(v) => v,
        }
    }
}

/// The chunks of one completion, in order: an iterator of [`Chunk`]s. A plain receive has one
/// chunk; a bundle one per buffer it filled (the first from where the previous data in that
/// buffer ended, the others from where their entries start). It forms each chunk as it is
/// taken, and allocates nothing for up to four buffers; chunks not taken give their buffers
/// back when it is dropped.
///
/// `Send` and `Sync` like a chunk.
pub struct Chunks {
    /// `Arc::as_ptr` of the pool's `Shared`, kept alive by the references the pieces hold.
    shared: NonNull<Shared>,
    pieces: Pieces,
    /// Index of the next piece to hand out.
    next: u32,
    /// Bytes not yet handed out.
    left: u32,
    /// Bytes of the whole completion.
    total: u32,
    /// The pool's buffer length (kept here: reading it through `shared` needs a live piece).
    buf_len: u32,
    /// Whether the final buffer stays with the kernel (its chunk is not the last).
    keep_final: bool,
}

// SAFETY: like `Chunk`: the pieces are disjoint ranges the kernel no longer writes, kept alive
// by one reference per piece; releasing is atomic.
unsafe impl Send for Chunks {}
// SAFETY: `&Chunks` only reads plain fields.
unsafe impl Sync for Chunks {}

impl Chunks {
    /// The chunks of `total` bytes laid over `pieces`.
    ///
    /// # Safety
    /// For each piece the caller holds one reference to its buffer, given to the chunk formed
    /// from it (or released on drop); the bytes fill each piece's buffer from its offset to the
    /// end of the buffer, except the last piece, which takes what is left; and every such
    /// range satisfies [`Chunk::new`]'s contract. `shared` is `Arc::as_ptr` of the pool's
    /// `Shared`.
    #[inline]
    pub(crate) unsafe fn new(
        shared: NonNull<Shared>,
        pieces: Pieces,
        total: u32,
        buf_len: u32,
        keep_final: bool,
    ) -> Self {
        Chunks {
            shared,
            pieces,
            next: 0,
            left: total,
            total,
            buf_len,
            keep_final,
        }
    }

    /// Total bytes of the completion (the CQE's result).
    pub fn total_len(&self) -> usize {
        self.total as usize
    }

    /// Buffers the completion filled (1 unless it is a bundle).
    pub fn buffers(&self) -> usize {
        self.pieces.as_slice().len()
    }

    /// (bid, offset, length) of chunk `i` of the completion, without taking it (`None` past
    /// the end).
    pub fn piece(&self, i: usize) -> Option<(u16, u32, u32)> {
        let pieces = self.pieces.as_slice();
        let p = *pieces.get(i)?;
        // Lengths follow from the layout: every piece but the last runs to its buffer's end.
        let before: u64 = pieces[..i]
            .iter()
            .map(|q| u64::from(self.buf_len - q.offset))
            .sum();
        let rest = u64::from(self.total) - before;
        let len = if i + 1 == pieces.len() {
            rest
        } else {
            rest.min(u64::from(self.buf_len - p.offset))
        };
        Some((p.bid, p.offset, len as u32))
    }

    /// The only chunk of a one-buffer completion; a bundle of several buffers comes back
    /// unchanged.
    pub fn into_single(mut self) -> Result<Chunk, Chunks> {
        if self.buffers() == 1 && self.next == 0 {
            Ok(self.next().expect("one piece"))
        } else {
            Err(self)
        }
    }
}

impl Iterator for Chunks {
    type Item = Chunk;

    #[inline]
    fn next(&mut self) -> Option<Chunk> {
        let pieces = self.pieces.as_slice();
        let i = self.next as usize;
        let p = *pieces.get(i)?;
        let final_piece = i + 1 == pieces.len();
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
        let n = self.pieces.as_slice().len() - self.next as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Chunks {}

impl Drop for Chunks {
    fn drop(&mut self) {
        let pieces = self.pieces.as_slice();
        for p in &pieces[self.next as usize..] {
            // SAFETY: `shared` is the `Arc`'s pointer; this piece's reference is ours to give
            // up, and the references of the pieces after it (or, for the last, nothing more
            // touches `shared`) keep it alive until then.
            unsafe { Shared::release(self.shared.as_ptr(), p.bid) };
        }
    }
}

impl fmt::Debug for Chunks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunks")
            .field("total", &self.total)
            .field("pieces", &&self.pieces.as_slice()[self.next as usize..])
            .finish()
    }
}
