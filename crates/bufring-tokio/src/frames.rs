//! Frames as a stream: a [`RecvStream`]'s chunks cut by a [`Framing`] (length-prefixed or
//! delimited messages), each frame in place in its pool buffer when it lies in one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bufring::{Frame, FrameError, Framing};
use futures_core::Stream;

use crate::RecvStream;

/// A [`RecvStream`] cut into frames by `F` (a [`LengthPrefixed`](bufring::LengthPrefixed) or
/// [`Delimited`](bufring::Delimited) framing, or your own [`Framing`]): a
/// [`Stream`] of [`Frame`]s. Made by [`RecvStream::frames`].
///
/// - A frame that lies in one chunk is handed out in place ([`Frame::Chunk`], zero copy); one
///   that straddles two chunks is copied once ([`Frame::Copied`]).
/// - It takes chunks from the stream only while no whole frame is buffered, so it holds at
///   most one frame's bytes (bounded by the framing's maximum) plus one chunk. Those chunks
///   are yours, not the driver's: an idle spill cannot move them.
/// - Errors are items, then the end: a frame over the framing's maximum (`InvalidData`: the
///   peer cannot be trusted any more), the stream ending inside a frame (`UnexpectedEof`), or
///   the stream's own error (a reset).
/// - Cancel-safe: a frame is taken only when it is returned.
///
/// Code built on `tokio_util::codec` can keep its decoder over
/// [`RecvStream::into_async_read`] (which copies); this adapter is the zero-copy way.
pub struct Frames<F> {
    inner: RecvStream,
    buf: bufring::RecvStream,
    framing: F,
    /// An error or the end was returned: only `None` from here.
    done: bool,
}

impl<F> std::fmt::Debug for Frames<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frames")
            .field("inner", &self.inner)
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl<F: Framing> Frames<F> {
    pub(crate) fn new(inner: RecvStream, framing: F) -> Frames<F> {
        Frames {
            inner,
            buf: bufring::RecvStream::new(),
            framing,
            done: false,
        }
    }

    /// The next frame (what [`Stream::poll_next`] gives, as a future). Cancel-safe.
    pub async fn next_frame(&mut self) -> Option<io::Result<Frame>> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    /// The stream underneath, to send or query through.
    pub fn get_ref(&self) -> &RecvStream {
        &self.inner
    }

    /// Bytes taken from the stream and not yet handed out as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match self.buf.next_frame(&mut self.framing) {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if self.buf.is_finished() => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(frame_error(e))));
                }
            }
            match self.inner.poll_chunk(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.buf.push(chunk),
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => self.buf.finish(),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A framing error as an `io::Error`: `UnexpectedEof` for a stream that ended inside a frame,
/// `InvalidData` otherwise.
fn frame_error(e: bufring::Error) -> io::Error {
    let kind = match &e {
        bufring::Error::Frame(FrameError::Incomplete { .. }) => io::ErrorKind::UnexpectedEof,
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, e)
}

impl<F: Framing + Unpin> Stream for Frames<F> {
    type Item = io::Result<Frame>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_frame(cx)
    }
}
