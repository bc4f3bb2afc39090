//! The receive side of one connection as an ordered queue of chunks. A chunk that begins
//! where the previous one ends, in the same buffer, is merged into it (no copy): incremental
//! rings put a socket's consecutive receives side by side when it has the group alone.

use std::collections::VecDeque;

use crate::chunk::Chunk;
use crate::completion::Completion;
use crate::frame::{Frame, Framing};
use crate::Result;

/// The bytes of one connection, in order, as chunks of pool buffers.
///
/// Feed it the chunks of that connection's completions with [`push`](Self::push) (or whole
/// completions with [`push_completion`](Self::push_completion)); take bytes out as chunks
/// ([`pop`](Self::pop)), as exact-length pieces ([`take`](Self::take)), or as frames
/// ([`next_frame`](Self::next_frame) with a [`LengthPrefixed`](crate::LengthPrefixed) or
/// [`Delimited`](crate::Delimited) framing).
///
/// # When data is zero-copy
/// - [`push`](Self::push) and [`pop`](Self::pop) never copy; merging adjacent chunks does not
///   copy either.
/// - [`take`](Self::take) (and so every frame) hands out a [`Frame::Chunk`] when the bytes lie
///   in the first queued chunk, i.e. contiguously in one pool buffer. Only bytes that straddle
///   two chunks (two buffers, or one buffer with another connection's data between them) are
///   copied into a [`Frame::Copied`].
///
/// Chunks held here keep their buffers from going back to the kernel: size the pool for
/// what a connection may hold (at most about one frame per connection with the framings).
#[derive(Debug, Default)]
pub struct RecvStream {
    chunks: VecDeque<Chunk>,
    /// Bytes queued.
    len: usize,
    /// Bytes ever taken out (lets framings tell whether their scan state is still valid).
    consumed: u64,
    finished: bool,
    merges: u64,
}

impl RecvStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the next chunk of the connection, merging it into the last queued chunk when
    /// they are adjacent in the same buffer. Empty chunks are dropped.
    pub fn push(&mut self, chunk: Chunk) {
        if chunk.is_empty() {
            return;
        }
        self.len += chunk.len();
        let chunk = match self.chunks.back_mut() {
            Some(back) => match back.try_merge(chunk) {
                Ok(()) => {
                    self.merges += 1;
                    return;
                }
                Err(c) => c,
            },
            None => chunk,
        };
        self.chunks.push_back(chunk);
    }

    /// Takes the data of a completion of this connection's receive: `Data` is pushed, and
    /// `EndOfStream` [finishes](Self::finish) the stream. Anything else (`NoBuffers`,
    /// `Failed`) is handed back for the caller to handle (re-arm, or give up).
    pub fn push_completion(&mut self, completion: Completion) -> Option<Completion> {
        match completion {
            Completion::Data { chunks, .. } => {
                chunks.for_each(|c| self.push(c));
                None
            }
            Completion::EndOfStream => {
                self.finish();
                None
            }
            other => Some(other),
        }
    }

    /// Marks the end of the connection's data: no more chunks will come.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Whether [`finish`](Self::finish) was called.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no bytes are queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes taken out so far (by `pop`, `take`, `skip` and the framings).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// How many pushed chunks were merged into the one before them.
    pub fn merges(&self) -> u64 {
        self.merges
    }

    /// The queued chunks, oldest first (after merging).
    pub fn chunks(&self) -> impl ExactSizeIterator<Item = &Chunk> {
        self.chunks.iter()
    }

    /// Takes the oldest queued chunk, whole (zero copy).
    pub fn pop(&mut self) -> Option<Chunk> {
        let c = self.chunks.pop_front()?;
        self.len -= c.len();
        self.consumed += c.len() as u64;
        Some(c)
    }

    /// Takes exactly `n` bytes, or `None` (and nothing) if fewer are queued. Zero copy
    /// ([`Frame::Chunk`]) when they lie in the first queued chunk; copied otherwise. `n == 0`
    /// gives an empty `Frame::Copied` (no allocation, no buffer held).
    pub fn take(&mut self, n: usize) -> Option<Frame> {
        if n > self.len {
            return None;
        }
        if n == 0 {
            return Some(Frame::Copied(Vec::new()));
        }
        let front = self.chunks.front_mut()?;
        let frame = if front.len() == n {
            let c = self.chunks.pop_front()?;
            Frame::Chunk(c)
        } else if front.len() > n {
            Frame::Chunk(front.split_to(n))
        } else {
            let mut v = Vec::with_capacity(n);
            while v.len() < n {
                let front = self.chunks.front_mut()?;
                let k = front.len().min(n - v.len());
                v.extend_from_slice(&front[..k]);
                if k == front.len() {
                    self.chunks.pop_front();
                } else {
                    front.advance(k);
                }
            }
            Frame::Copied(v)
        };
        self.len -= n;
        self.consumed += n as u64;
        Some(frame)
    }

    /// Drops the first `n` bytes (all of them if fewer are queued); returns how many went.
    pub fn skip(&mut self, n: usize) -> usize {
        let n = n.min(self.len);
        let mut left = n;
        while left > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
        self.len -= n;
        self.consumed += n as u64;
        n
    }

    /// Copies the first `out.len()` bytes into `out` without taking them; `false` (and
    /// nothing copied) if fewer are queued.
    pub fn peek(&self, out: &mut [u8]) -> bool {
        if out.len() > self.len {
            return false;
        }
        let mut at = 0;
        for c in &self.chunks {
            if at == out.len() {
                break;
            }
            let k = c.len().min(out.len() - at);
            out[at..at + k].copy_from_slice(&c[..k]);
            at += k;
        }
        true
    }

    /// The position of the first occurrence of `needle` that starts at or after `from`,
    /// across chunk boundaries. An empty needle is never found.
    pub fn find(&self, needle: &[u8], from: usize) -> Option<usize> {
        if needle.is_empty() || self.len < needle.len() {
            return None;
        }
        let last_start = self.len - needle.len();
        let mut start = 0; // position of the current chunk's first byte
        for (i, c) in self.chunks.iter().enumerate() {
            let end = start + c.len();
            // Occurrences wholly inside this chunk.
            if end >= from + needle.len() && c.len() >= needle.len() {
                let lo = from.saturating_sub(start);
                if let Some(p) = c[lo..].windows(needle.len()).position(|w| w == needle) {
                    return Some(start + lo + p);
                }
            }
            // Occurrences that begin in this chunk and end in a later one.
            let lo = start.max(from).max((end + 1).saturating_sub(needle.len()));
            for s in lo..end.min(last_start + 1) {
                if self.matches_at(i, start, s, needle) {
                    return Some(s);
                }
            }
            start = end;
        }
        None
    }

    /// Whether `needle` sits at stream position `pos`, which lies in chunk `i` (starting at
    /// stream position `chunk_start`).
    fn matches_at(&self, i: usize, chunk_start: usize, pos: usize, needle: &[u8]) -> bool {
        let mut off = pos - chunk_start;
        let mut k = 0;
        for c in self.chunks.iter().skip(i) {
            while off < c.len() && k < needle.len() {
                if c[off] != needle[k] {
                    return false;
                }
                off += 1;
                k += 1;
            }
            if k == needle.len() {
                return true;
            }
            off = 0;
        }
        false
    }

    /// The next frame by `framing`, `Ok(None)` when more data is needed. At the end of the
    /// stream (after [`finish`](Self::finish)) leftover bytes that do not form a frame give
    /// [`FrameError::Incomplete`](crate::FrameError::Incomplete). A frame longer than the
    /// framing's maximum gives [`FrameError::TooLong`](crate::FrameError::TooLong) and leaves
    /// the stream as it was: the connection cannot be trusted any more.
    pub fn next_frame<F: Framing + ?Sized>(&mut self, framing: &mut F) -> Result<Option<Frame>> {
        framing.decode(self)
    }
}

/// Chunks over fabricated buffers for the unit tests of the stream, the framings and the
/// recvmsg parser (no kernel involved: the bytes are written by the test).
#[cfg(test)]
pub(crate) mod test_chunks {
    use std::sync::Arc;

    use crate::chunk::{Chunk, Shared};
    use crate::mem::{HugePages, Mmap};

    /// A small xorshift generator for the unit tests' random piece sizes.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// `count` buffers of `buf_len` bytes, as a pool would have them.
    pub(crate) struct Buffers(Arc<Shared>);

    impl Buffers {
        pub(crate) fn new(count: u32, buf_len: u32) -> Self {
            let region = Mmap::anonymous(count as usize * buf_len as usize, HugePages::Off)
                .expect("anonymous mapping");
            Buffers(Arc::new(Shared::new(region, buf_len, count)))
        }

        /// Writes `bytes` at `offset` of buffer `bid` and returns them as a chunk. The caller
        /// never asks for a range a live chunk covers.
        pub(crate) fn chunk(&self, bid: u16, offset: u32, bytes: &[u8]) -> Chunk {
            assert!(offset as usize + bytes.len() <= self.0.buf_len as usize);
            // SAFETY: the range lies inside buffer `bid` (asserted above), no live chunk covers
            // it (the tests hand out disjoint ranges) and no kernel is involved.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.0.buf_addr(bid).add(offset as usize),
                    bytes.len(),
                );
            }
            self.0.acquire(bid);
            // SAFETY: as above; the chunk takes the reference just acquired, and the test keeps
            // its own `Arc`.
            unsafe { Chunk::new(Shared::ptr(&self.0), bid, offset, bytes.len() as u32, false) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_chunks::{Buffers, Rng};
    use super::*;

    fn naive_find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
        (from..=hay.len().checked_sub(needle.len())?).find(|&i| &hay[i..i + needle.len()] == needle)
    }

    #[test]
    fn adjacent_chunks_merge_others_do_not() {
        let b = Buffers::new(4, 64);
        let mut s = RecvStream::new();
        s.push(b.chunk(0, 0, b"ab"));
        s.push(b.chunk(0, 2, b"cd"));
        s.push(b.chunk(0, 10, b"ef")); // same buffer, not adjacent
        s.push(b.chunk(1, 0, b"gh")); // other buffer
        s.push(b.chunk(1, 2, b""));
        assert_eq!(s.merges(), 1);
        assert_eq!(s.chunks().len(), 3);
        assert_eq!(s.len(), 8);
        let c = s.pop().unwrap();
        assert_eq!(&c[..], b"abcd");
        assert_eq!(s.consumed(), 4);
    }

    #[test]
    fn take_is_zero_copy_inside_a_chunk_and_copies_across() {
        let b = Buffers::new(4, 64);
        let mut s = RecvStream::new();
        s.push(b.chunk(0, 0, b"hello"));
        s.push(b.chunk(1, 0, b"world"));
        let f = s.take(3).unwrap();
        assert!(f.is_zero_copy());
        assert_eq!(&f[..], b"hel");
        let f = s.take(4).unwrap();
        assert!(!f.is_zero_copy());
        assert_eq!(&f[..], b"lowo");
        assert!(s.take(4).is_none());
        assert_eq!(s.len(), 3);
        let f = s.take(3).unwrap();
        assert!(f.is_zero_copy());
        assert_eq!(&f[..], b"rld");
        assert!(s.is_empty());
        assert!(!s.take(0).unwrap().is_zero_copy());
    }

    #[test]
    fn skip_and_peek_cross_chunks() {
        let b = Buffers::new(4, 64);
        let mut s = RecvStream::new();
        for (i, p) in [&b"ab"[..], b"c", b"def"].iter().enumerate() {
            s.push(b.chunk(i as u16, 0, p));
        }
        let mut out = [0u8; 4];
        assert!(s.peek(&mut out));
        assert_eq!(&out, b"abcd");
        assert!(!s.peek(&mut [0u8; 7]));
        assert_eq!(s.skip(3), 3);
        assert_eq!(&s.take(3).unwrap()[..], b"def");
        assert_eq!(s.skip(5), 0);
    }

    #[test]
    fn find_matches_a_naive_search_on_random_splits() {
        let b = Buffers::new(64, 256);
        let mut rng = Rng(0x1234_5678);
        for round in 0..300 {
            let len = rng.below(60);
            let hay: Vec<u8> = (0..len).map(|_| b"ab\r\n"[rng.below(4)]).collect();
            let mut s = RecvStream::new();
            let mut at = 0;
            let mut bid = 0;
            while at < hay.len() {
                let n = 1 + rng.below(6).min(hay.len() - at - 1);
                s.push(b.chunk(bid, 0, &hay[at..at + n]));
                bid += 1;
                at += n;
            }
            for needle in [&b"\r\n"[..], b"a", b"ab\r", b"\n\r\n", b"abab"] {
                for from in 0..=len + 1 {
                    assert_eq!(
                        s.find(needle, from),
                        naive_find(&hay, needle, from),
                        "round {round}, needle {needle:?}, from {from}"
                    );
                }
            }
        }
    }
}
