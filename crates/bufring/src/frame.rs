//! Framing on a [`RecvStream`]: length-prefixed and delimiter-terminated messages, handed out
//! as a chunk of the pool buffer when a frame lies in one buffer, copied only when it straddles
//! two.

use std::fmt;
use std::ops::{Deref, DerefMut};

use crate::chunk::Chunk;
use crate::error::{Error, Result};
use crate::stream::RecvStream;

/// One frame taken from a [`RecvStream`].
///
/// - `Chunk`: the frame's bytes lie contiguously in one pool buffer and are handed out in
///   place (zero copy). Dropping it gives the buffer back like any chunk.
/// - `Copied`: the frame straddled two chunks (two buffers, or non-adjacent pieces of one), so
///   its bytes were copied into a `Vec` once. Empty frames are also `Copied` (an empty `Vec`
///   allocates nothing).
///
/// Both deref to `[u8]`.
#[derive(Debug)]
pub enum Frame {
    /// The frame in place, in its pool buffer (zero copy).
    Chunk(Chunk),
    /// The frame's bytes, copied because they straddled two chunks.
    Copied(Vec<u8>),
}

impl Frame {
    /// Whether the frame was handed out in place, without copying.
    pub fn is_zero_copy(&self) -> bool {
        matches!(self, Frame::Chunk(_))
    }

    /// The bytes as a `Vec` (copies a `Chunk` frame).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Frame::Chunk(c) => c.to_vec(),
            Frame::Copied(v) => v,
        }
    }
}

impl Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Frame::Chunk(c) => c,
            Frame::Copied(v) => v,
        }
    }
}

impl DerefMut for Frame {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Frame::Chunk(c) => c,
            Frame::Copied(v) => v,
        }
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// What went wrong while framing a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame is longer than the framing allows. For a delimited framing without a
    /// delimiter in sight yet, `len` is how long the frame is at least.
    TooLong {
        /// The frame's length (without prefix or delimiter).
        len: usize,
        /// The framing's maximum.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    Incomplete {
        /// Bytes left over.
        buffered: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::TooLong { len, max } => {
                write!(f, "a frame of {len} bytes exceeds the maximum of {max}")
            }
            FrameError::Incomplete { buffered } => {
                write!(
                    f,
                    "the stream ended inside a frame ({buffered} bytes left over)"
                )
            }
        }
    }
}

/// A way of cutting a stream into frames. Implemented by [`LengthPrefixed`] and
/// [`Delimited`]; used through [`RecvStream::next_frame`].
pub trait Framing {
    /// Takes the next whole frame off the front of `stream`, or returns `Ok(None)` and leaves
    /// the stream as it is when the frame is not complete yet.
    fn decode(&mut self, stream: &mut RecvStream) -> Result<Option<Frame>>;
}

/// `Ok(None)` while more data may come; at the end of the stream, leftovers are an error.
fn need_more(stream: &RecvStream) -> Result<Option<Frame>> {
    if stream.is_finished() && !stream.is_empty() {
        return Err(FrameError::Incomplete {
            buffered: stream.len(),
        }
        .into());
    }
    Ok(None)
}

/// The size of a length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixWidth {
    /// One byte.
    U8,
    /// Two bytes.
    U16,
    /// Four bytes.
    U32,
}

impl PrefixWidth {
    /// Bytes in the prefix.
    pub fn bytes(self) -> usize {
        match self {
            PrefixWidth::U8 => 1,
            PrefixWidth::U16 => 2,
            PrefixWidth::U32 => 4,
        }
    }
}

/// Frames that start with their length: a 1-, 2- or 4-byte unsigned integer (big-endian by
/// default) counting the bytes that follow it.
///
/// The frame handed out is the payload without the prefix (unless
/// [`keep_prefix`](Self::keep_prefix)); it is zero copy when the payload lies in one chunk,
/// even if the prefix itself straddled two.
#[derive(Debug, Clone)]
pub struct LengthPrefixed {
    width: PrefixWidth,
    big_endian: bool,
    max_len: usize,
    keep_prefix: bool,
}

impl LengthPrefixed {
    /// A big-endian prefix of `width`; frames longer than `max_len` bytes (payload) are
    /// refused with [`FrameError::TooLong`].
    pub fn new(width: PrefixWidth, max_len: usize) -> Self {
        LengthPrefixed {
            width,
            big_endian: true,
            max_len,
            keep_prefix: false,
        }
    }

    /// A big-endian `u16` prefix.
    pub fn u16_be(max_len: usize) -> Self {
        Self::new(PrefixWidth::U16, max_len)
    }

    /// A big-endian `u32` prefix.
    pub fn u32_be(max_len: usize) -> Self {
        Self::new(PrefixWidth::U32, max_len)
    }

    /// Reads the prefix as little-endian.
    pub fn little_endian(mut self) -> Self {
        self.big_endian = false;
        self
    }

    /// Hands out the prefix with the payload (default: payload only).
    pub fn keep_prefix(mut self, keep: bool) -> Self {
        self.keep_prefix = keep;
        self
    }

    /// The largest payload accepted.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

impl Framing for LengthPrefixed {
    fn decode(&mut self, stream: &mut RecvStream) -> Result<Option<Frame>> {
        let w = self.width.bytes();
        let mut p = [0u8; 4];
        if !stream.peek(&mut p[..w]) {
            return need_more(stream);
        }
        let len = match (self.width, self.big_endian) {
            (PrefixWidth::U8, _) => u64::from(p[0]),
            (PrefixWidth::U16, true) => u64::from(u16::from_be_bytes([p[0], p[1]])),
            (PrefixWidth::U16, false) => u64::from(u16::from_le_bytes([p[0], p[1]])),
            (PrefixWidth::U32, true) => u64::from(u32::from_be_bytes(p)),
            (PrefixWidth::U32, false) => u64::from(u32::from_le_bytes(p)),
        };
        if len > self.max_len as u64 {
            return Err(FrameError::TooLong {
                len: usize::try_from(len).unwrap_or(usize::MAX),
                max: self.max_len,
            }
            .into());
        }
        let len = len as usize;
        if stream.len() < w + len {
            return need_more(stream);
        }
        let frame = if self.keep_prefix {
            stream.take(w + len)
        } else {
            stream.skip(w);
            stream.take(len)
        };
        Ok(frame)
    }
}

/// Frames that end with a delimiter (e.g. `b"\r\n"`). The frame handed out excludes the
/// delimiter (unless [`keep_delimiter`](Self::keep_delimiter)); it is zero copy when it lies
/// in one chunk. The search resumes where it left off, so a long frame arriving in many
/// pieces is scanned once.
#[derive(Debug, Clone)]
pub struct Delimited {
    delimiter: Vec<u8>,
    max_len: usize,
    keep_delimiter: bool,
    /// Bytes known to hold no delimiter start, valid while the stream's `consumed` equals
    /// `mark`.
    scanned: usize,
    mark: u64,
}

impl Delimited {
    /// Frames ending with `delimiter` (not empty); frames longer than `max_len` bytes (without
    /// the delimiter) are refused with [`FrameError::TooLong`].
    pub fn new(delimiter: impl Into<Vec<u8>>, max_len: usize) -> Result<Self> {
        let delimiter = delimiter.into();
        if delimiter.is_empty() {
            return Err(Error::config("delimiter", "must not be empty"));
        }
        Ok(Delimited {
            delimiter,
            max_len,
            keep_delimiter: false,
            scanned: 0,
            mark: u64::MAX,
        })
    }

    /// Lines ending with `\r\n`.
    pub fn crlf(max_len: usize) -> Self {
        Delimited {
            delimiter: b"\r\n".to_vec(),
            max_len,
            keep_delimiter: false,
            scanned: 0,
            mark: u64::MAX,
        }
    }

    /// Hands out the delimiter with the frame (default: frame only).
    pub fn keep_delimiter(mut self, keep: bool) -> Self {
        self.keep_delimiter = keep;
        self
    }

    /// The delimiter.
    pub fn delimiter(&self) -> &[u8] {
        &self.delimiter
    }

    /// The largest frame accepted (without the delimiter).
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

impl Framing for Delimited {
    fn decode(&mut self, stream: &mut RecvStream) -> Result<Option<Frame>> {
        let d = self.delimiter.len();
        let from = if self.mark == stream.consumed() {
            self.scanned
        } else {
            0
        };
        match stream.find(&self.delimiter, from) {
            Some(pos) if pos > self.max_len => Err(FrameError::TooLong {
                len: pos,
                max: self.max_len,
            }
            .into()),
            Some(pos) => {
                let frame = if self.keep_delimiter {
                    stream.take(pos + d)
                } else {
                    let f = stream.take(pos);
                    stream.skip(d);
                    f
                };
                self.mark = u64::MAX;
                Ok(frame)
            }
            None => {
                // Any delimiter still to come starts at len - (d - 1) or later.
                let at_least = stream.len() + 1 - d.min(stream.len() + 1);
                if at_least > self.max_len {
                    return Err(FrameError::TooLong {
                        len: at_least,
                        max: self.max_len,
                    }
                    .into());
                }
                self.scanned = at_least;
                self.mark = stream.consumed();
                need_more(stream)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::test_chunks::{Buffers, Rng};

    /// Pushes `wire` in random pieces: each piece continues the current buffer (adjacent, so it
    /// merges) or, at random, starts a fresh buffer. Decodes after every push and returns the
    /// frames with whether each was zero copy.
    fn run(
        wire: &[u8],
        framing: &mut dyn Framing,
        seed: u64,
        p_new_buffer: usize,
    ) -> Vec<(Vec<u8>, bool)> {
        let b = Buffers::new(4096, 512);
        let mut rng = Rng(seed | 1);
        let mut s = RecvStream::new();
        let (mut bid, mut off) = (0u16, 0u32);
        let mut at = 0;
        let mut out = Vec::new();
        while at < wire.len() {
            let n = (1 + rng.below(97)).min(wire.len() - at);
            if off as usize + n > 512 || rng.below(100) < p_new_buffer {
                bid += 1;
                off = 0;
            }
            s.push(b.chunk(bid, off, &wire[at..at + n]));
            off += n as u32;
            at += n;
            while let Some(f) = s.next_frame(framing).unwrap() {
                out.push((f.to_vec(), f.is_zero_copy()));
            }
        }
        s.finish();
        assert!(s.next_frame(framing).unwrap().is_none());
        assert!(s.is_empty());
        out
    }

    fn frames(rng: &mut Rng, n: usize, max: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| {
                let len = rng.below(max + 1);
                (0..len).map(|_| b"abcdefgh\n"[rng.below(9)]).collect()
            })
            .collect()
    }

    #[test]
    fn length_prefixed_frames_survive_any_split() {
        for (width, le) in [
            (PrefixWidth::U8, false),
            (PrefixWidth::U16, false),
            (PrefixWidth::U16, true),
            (PrefixWidth::U32, false),
            (PrefixWidth::U32, true),
        ] {
            for seed in 1..20u64 {
                let mut rng = Rng(seed * 7919);
                let want = frames(&mut rng, 200, 200);
                let mut wire = Vec::new();
                for f in &want {
                    let len = f.len() as u32;
                    let p = if le {
                        len.to_le_bytes()
                    } else {
                        len.to_be_bytes()
                    };
                    match (width, le) {
                        (PrefixWidth::U8, _) => wire.push(len as u8),
                        (PrefixWidth::U16, false) => wire.extend_from_slice(&p[2..]),
                        (PrefixWidth::U16, true) => wire.extend_from_slice(&p[..2]),
                        (PrefixWidth::U32, _) => wire.extend_from_slice(&p),
                    }
                    wire.extend_from_slice(f);
                }
                let mut framing = LengthPrefixed::new(width, 255);
                if le {
                    framing = framing.little_endian();
                }
                let got = run(&wire, &mut framing, seed, 30);
                let got: Vec<_> = got.into_iter().map(|(f, _)| f).collect();
                assert_eq!(got, want, "{width:?} le={le} seed {seed}");
            }
        }
    }

    #[test]
    fn delimited_frames_survive_any_split() {
        for delim in [&b"\r\n"[..], b"\n", b"--end--"] {
            for seed in 1..20u64 {
                let mut rng = Rng(seed * 104_729);
                let want: Vec<Vec<u8>> = frames(&mut rng, 200, 150)
                    .into_iter()
                    .map(|f| f.into_iter().filter(|&c| c != b'\n').collect())
                    .collect();
                let mut wire = Vec::new();
                for f in &want {
                    wire.extend_from_slice(f);
                    wire.extend_from_slice(delim);
                }
                let mut framing = Delimited::new(delim, 150).unwrap();
                let got: Vec<_> = run(&wire, &mut framing, seed, 30)
                    .into_iter()
                    .map(|(f, _)| f)
                    .collect();
                assert_eq!(got, want, "delimiter {delim:?} seed {seed}");
            }
        }
    }

    #[test]
    fn frames_in_one_buffer_are_zero_copy() {
        let mut rng = Rng(99);
        let want = frames(&mut rng, 300, 40);
        let mut wire = Vec::new();
        for f in &want {
            wire.extend_from_slice(&(f.len() as u16).to_be_bytes());
            wire.extend_from_slice(f);
        }
        // Never a fresh buffer except when one is full: frames straddle only buffer ends.
        let got = run(&wire, &mut LengthPrefixed::u16_be(40), 5, 0);
        assert_eq!(got.len(), want.len());
        let copied = got.iter().filter(|(f, z)| !z && !f.is_empty()).count();
        let buffers = wire.len().div_ceil(512);
        assert!(
            copied < buffers,
            "{copied} frames copied, but only {buffers} buffer boundaries"
        );
    }

    #[test]
    fn prefix_and_delimiter_can_be_kept() {
        let b = Buffers::new(4, 64);
        let mut s = RecvStream::new();
        s.push(b.chunk(0, 0, b"\x00\x03abcxy\r\nz"));
        let f = s
            .next_frame(&mut LengthPrefixed::u16_be(10).keep_prefix(true))
            .unwrap()
            .unwrap();
        assert_eq!(&f[..], b"\x00\x03abc");
        let f = s
            .next_frame(&mut Delimited::crlf(10).keep_delimiter(true))
            .unwrap()
            .unwrap();
        assert_eq!(&f[..], b"xy\r\n");
        assert!(f.is_zero_copy());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn too_long_frames_are_refused_and_leave_the_stream_alone() {
        let b = Buffers::new(4, 64);
        let mut s = RecvStream::new();
        s.push(b.chunk(0, 0, &[0x01, 0x00, 1, 2, 3]));
        let e = s.next_frame(&mut LengthPrefixed::u16_be(255)).unwrap_err();
        assert!(matches!(
            e,
            Error::Frame(FrameError::TooLong { len: 256, max: 255 })
        ));
        assert_eq!(s.len(), 5);
        let e = s.next_frame(&mut LengthPrefixed::u32_be(10)).unwrap_err();
        assert!(matches!(e, Error::Frame(FrameError::TooLong { .. })), "{e}");

        // No delimiter within max + delimiter bytes: refused before the frame ends.
        let mut s = RecvStream::new();
        let mut d = Delimited::crlf(4);
        s.push(b.chunk(1, 0, b"abcd"));
        assert!(s.next_frame(&mut d).unwrap().is_none());
        s.push(b.chunk(1, 4, b"\r"));
        assert!(s.next_frame(&mut d).unwrap().is_none());
        s.push(b.chunk(1, 5, b"e"));
        let e = s.next_frame(&mut d).unwrap_err();
        assert!(
            matches!(e, Error::Frame(FrameError::TooLong { len: 5, max: 4 })),
            "{e}"
        );
        // A delimiter found too late.
        let mut s = RecvStream::new();
        s.push(b.chunk(2, 0, b"abcdef\r\n"));
        let e = s.next_frame(&mut Delimited::crlf(4)).unwrap_err();
        assert!(
            matches!(e, Error::Frame(FrameError::TooLong { len: 6, max: 4 })),
            "{e}"
        );
        // Exactly max is fine.
        let mut s = RecvStream::new();
        s.push(b.chunk(3, 0, b"abcd\r\n"));
        assert_eq!(
            &s.next_frame(&mut Delimited::crlf(4)).unwrap().unwrap()[..],
            b"abcd"
        );
    }

    #[test]
    fn a_stream_that_ends_inside_a_frame_is_incomplete() {
        let b = Buffers::new(4, 64);
        let mut s = RecvStream::new();
        s.push(b.chunk(0, 0, b"\x00\x05ab"));
        let mut f = LengthPrefixed::u16_be(100);
        assert!(s.next_frame(&mut f).unwrap().is_none());
        s.finish();
        let e = s.next_frame(&mut f).unwrap_err();
        assert!(matches!(
            e,
            Error::Frame(FrameError::Incomplete { buffered: 4 })
        ));
        let mut s = RecvStream::new();
        s.push(b.chunk(1, 0, b"line"));
        s.finish();
        assert!(s.next_frame(&mut Delimited::crlf(100)).is_err());
        assert!(Delimited::new(Vec::new(), 1).is_err());
    }

    #[test]
    fn delimited_scan_restarts_when_the_stream_was_consumed_elsewhere() {
        let b = Buffers::new(4, 64);
        let mut s = RecvStream::new();
        let mut d = Delimited::crlf(100);
        s.push(b.chunk(0, 0, b"xxxxxxab"));
        assert!(s.next_frame(&mut d).unwrap().is_none());
        // Someone else takes bytes off the front: the remembered scan position is stale.
        s.skip(6);
        s.push(b.chunk(1, 0, b"\r\n"));
        assert_eq!(&s.next_frame(&mut d).unwrap().unwrap()[..], b"ab");
    }
}
