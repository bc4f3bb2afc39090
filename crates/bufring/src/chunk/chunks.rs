//! The chunks of one completion: one for a plain receive, one per buffer for a bundle. The
//! first chunk is formed with the completion; a bundle's others are formed as they are taken,
//! and those never taken give their buffers back when the [`Chunks`] is dropped.

use std::fmt;
use std::ptr::NonNull;

use super::{Chunk, Shared};

/// Where one buffer's part of a bundle starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) bid: u16,
    pub(crate) offset: u32,
}

/// The chunks of one completion, in order: an iterator of [`Chunk`]s. A plain receive has one
/// chunk; a bundle one per buffer it filled (the first from where the previous data in that
/// buffer ended, the others from where their entries start). Chunks not taken give their
/// buffers back when it is dropped. A completion of one buffer allocates nothing; a bundle of
/// several keeps its other buffers in one allocation.
///
/// `Send` and `Sync` like a chunk.
pub struct Chunks {
    /// The first chunk, until taken.
    first: Option<Chunk>,
    /// A bundle's other buffers (`None` for one buffer).
    rest: Option<Box<Rest>>,
}

// Two nullable pointers' worth of tag and 32 bytes in all: a `Result<Completion>` then keeps a
// tag word of its own and the compiler moves it through registers. (A `Chunks` with an enum
// of its own inside, or one larger than 32 bytes, was moved through the stack as a blob whose
// loads stalled on the stores that had just written it: twice the time per completion.)
const _: () = assert!(std::mem::size_of::<Chunks>() == 32);

/// A bundle's buffers after the first, formed into chunks as they are taken.
struct Rest {
    /// `Arc::as_ptr` of the pool's `Shared`, kept alive by the references the pieces hold.
    shared: NonNull<Shared>,
    pieces: Box<[Piece]>,
    /// Index of the next piece to hand out.
    next: usize,
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
unsafe impl Send for Rest {}
// SAFETY: `&Rest` only reads plain fields.
unsafe impl Sync for Rest {}

impl Chunks {
    /// A completion of one buffer.
    #[inline]
    pub(crate) fn one(chunk: Chunk) -> Self {
        Chunks {
            first: Some(chunk),
            rest: None,
        }
    }

    /// A bundle: `first`, then the rest of `total` bytes laid over `pieces` (at least one).
    ///
    /// # Safety
    /// For each piece the caller holds one reference to its buffer, given to the chunk formed
    /// from it (or released on drop); the bytes fill each piece's buffer from its offset to the
    /// end of the buffer (`buf_len` bytes long), except the last piece, which takes what is
    /// left; every such range satisfies [`Chunk::new`]'s contract. `shared` is `Arc::as_ptr` of
    /// the pool's `Shared`.
    pub(crate) unsafe fn bundle(
        first: Chunk,
        shared: NonNull<Shared>,
        pieces: Box<[Piece]>,
        total: u32,
        buf_len: u32,
        keep_final: bool,
    ) -> Self {
        debug_assert!(!pieces.is_empty());
        let left = total - first.len() as u32;
        Chunks {
            first: Some(first),
            rest: Some(Box::new(Rest {
                shared,
                pieces,
                next: 0,
                left,
                total,
                buf_len,
                keep_final,
            })),
        }
    }

    /// Total bytes of the completion (the CQE's result); 0 once the chunk of a one-buffer
    /// completion was taken.
    pub fn total_len(&self) -> usize {
        match (&self.rest, &self.first) {
            (Some(r), _) => r.total as usize,
            (None, Some(c)) => c.len(),
            (None, None) => 0,
        }
    }

    /// Buffers the completion filled (1 unless it is a bundle).
    pub fn buffers(&self) -> usize {
        1 + self.rest.as_ref().map_or(0, |r| r.pieces.len())
    }

    /// The only chunk of a one-buffer completion; a bundle of several buffers (or a completion
    /// whose chunk was taken) comes back unchanged.
    pub fn into_single(mut self) -> Result<Chunk, Chunks> {
        if self.rest.is_some() {
            return Err(self);
        }
        match self.first.take() {
            Some(c) => Ok(c),
            None => Err(self),
        }
    }
}

impl Iterator for Chunks {
    type Item = Chunk;

    #[inline]
    fn next(&mut self) -> Option<Chunk> {
        match self.first.take() {
            Some(c) => Some(c),
            None => self.rest.as_mut()?.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::from(self.first.is_some())
            + self.rest.as_ref().map_or(0, |r| r.pieces.len() - r.next);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Chunks {}

impl Rest {
    fn next(&mut self) -> Option<Chunk> {
        let p = *self.pieces.get(self.next)?;
        self.next += 1;
        let final_piece = self.next == self.pieces.len();
        let len = if final_piece {
            self.left
        } else {
            self.left.min(self.buf_len - p.offset)
        };
        self.left -= len;
        let last = !(final_piece && self.keep_final);
        // SAFETY: the piece's reference goes to the chunk; its range is what `bundle`'s caller
        // vouched for.
        Some(unsafe { Chunk::new(self.shared, p.bid, p.offset, len, last) })
    }
}

impl Drop for Rest {
    fn drop(&mut self) {
        for p in &self.pieces[self.next..] {
            // SAFETY: `shared` is the `Arc`'s pointer; this piece's reference is ours to give
            // up, and the references of the pieces after it (or, for the last, nothing more
            // touches `shared`) keep it alive until then.
            unsafe { Shared::release(self.shared.as_ptr(), p.bid) };
        }
    }
}

impl fmt::Debug for Chunks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Chunks");
        d.field("first", &self.first);
        if let Some(r) = &self.rest {
            d.field("total", &r.total);
            d.field("rest", &&r.pieces[r.next..]);
        }
        d.finish()
    }
}
