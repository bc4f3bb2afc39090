//! A stream's side: the queue it shares with the driver thread, the `Stream` of chunks, sends,
//! and the `Bytes` and `AsyncRead` adapters.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_core::Stream;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::oneshot;

use crate::core::Cmd;
use crate::{stopped, Chunk, Link, Released};

/// What a stream and the driver thread share.
#[derive(Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
pub(crate) struct State {
    /// Chunks moved out of the driver's receive queue, in stream order.
    pub(crate) queue: VecDeque<Chunk>,
    /// Their bytes.
    pub(crate) buffered: usize,
    /// How the stream ended (end of file, or an error), not yet handed to the task.
    pub(crate) end: Option<io::Result<()>>,
    /// The end was handed to the task: only `None` from here.
    finished: bool,
    /// The driver thread stopped moving at the limit: ask it for more under half of it.
    pub(crate) want_pull: bool,
    /// The task took something since the driver thread last looked (idle spill).
    pub(crate) taken: bool,
    /// The task waiting for data.
    waker: Option<Waker>,
    /// Bytes queued to send (counted when a send is called) that the driver thread has not
    /// yet seen sent.
    pub(crate) unsent: usize,
    /// Why sends fail from now on: a send that failed, or the driver thread stopping.
    send_error: Option<io::Error>,
    /// `shutdown_write` was called: later sends fail at once.
    write_shut: bool,
    /// The stream was dropped or reset: its senders fail with `NotConnected`.
    closed: bool,
    /// Send futures waiting for `unsent` to go under the limit.
    send_wakers: Vec<Waker>,
    /// On a datagram socket: the error of the first datagram that failed since the last
    /// `flush` (that datagram was dropped; the others still go).
    datagram_error: Option<io::Error>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a consistent queue: go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Wakes the task, if one waits.
    pub(crate) fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Ends the stream with `e` unless it has ended already; sends fail with it from now on.
    pub(crate) fn abort(&mut self, e: io::Error) {
        self.fail_sends(copy_err(&e));
        if self.end.is_none() && !self.finished {
            self.end = Some(Err(e));
            self.wake();
        }
    }

    /// Sends fail with `e` from now on (the first error stays); waiting send futures see it.
    pub(crate) fn fail_sends(&mut self, e: io::Error) {
        if self.send_error.is_none() {
            self.send_error = Some(e);
        }
        self.wake_senders();
    }

    /// A datagram failed to go (dropped; the rest still go): the next `flush` says so.
    pub(crate) fn datagram_failed(&mut self, e: io::Error) {
        if self.datagram_error.is_none() {
            self.datagram_error = Some(e);
        }
    }

    /// `sent` bytes the tasks queued have gone: send futures waiting for room may go on.
    pub(crate) fn sent(&mut self, sent: usize, limit: usize) {
        self.unsent = self.unsent.saturating_sub(sent);
        if self.unsent < limit {
            self.wake_senders();
        }
    }

    /// The stream is gone: its senders fail with `NotConnected` from now on.
    fn close_sends(&mut self) {
        self.closed = true;
        self.wake_senders();
    }

    fn wake_senders(&mut self) {
        for w in self.send_wakers.drain(..) {
            w.wake();
        }
    }

    /// Why a send called now would fail, if it would.
    fn send_refused(&self) -> Option<io::Error> {
        if self.closed {
            return Some(not_connected());
        }
        if let Some(e) = &self.send_error {
            return Some(copy_err(e));
        }
        if self.write_shut {
            return Some(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream's write side is shut down",
            ));
        }
        None
    }

    /// Ready once nothing waits to be sent, with the error of a datagram that failed since the
    /// last flush, if one did (or once sends fail).
    fn poll_flushed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_room(cx, 1) {
            Poll::Ready(Ok(())) => match self.datagram_error.take() {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Ready(Ok(())),
            },
            other => other,
        }
    }

    /// Ready once less than `limit` waits to be sent (or sends fail).
    fn poll_room(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<io::Result<()>> {
        if let Some(e) = self.send_refused() {
            return Poll::Ready(Err(e));
        }
        if self.unsent < limit {
            return Poll::Ready(Ok(()));
        }
        if !self.send_wakers.iter().any(|w| w.will_wake(cx.waker())) {
            self.send_wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A copy of an error (io::Error is not `Clone`), keeping its OS code or kind.
pub(crate) fn copy_err(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

pub(crate) fn not_connected() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the stream was dropped (its socket is closing)",
    )
}

/// The bytes received on one socket, as a [`Stream`] of [`Chunk`]s, in order.
///
/// - The peer's end of stream ends the stream; a receive error (a reset) is one `Err` item,
///   then the end.
/// - Cancel-safe: `poll_next` takes a chunk off the queue only when it returns it.
/// - Dropping it closes the socket once what was queued to send has gone (so a peer that
///   never reads keeps it open until a send fails or the [`Uring`](crate::Uring) stops;
///   [`reset`](Self::reset) closes at once), and drops what was received and not taken. The
///   driver cancels the receive in flight and closes the fd when its requests have ended.
///
/// See the [crate docs](crate) for backpressure and sending.
pub struct RecvStream {
    sender: StreamSender,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RecvStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvStream")
            .field("key", &self.sender.key)
            .field("buffered", &self.buffered())
            .finish_non_exhaustive()
    }
}

impl RecvStream {
    pub(crate) fn new(link: Arc<Link>, key: u64, shared: Arc<Shared>) -> RecvStream {
        RecvStream {
            sender: StreamSender {
                link,
                key,
                shared: Arc::clone(&shared),
            },
            shared,
        }
    }

    /// The next item: what [`Stream::poll_next`] gives, as a future (for code without a
    /// `StreamExt`). Cancel-safe: a chunk is taken off the queue only when it is returned.
    pub async fn recv(&mut self) -> Option<io::Result<Chunk>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// Bytes received and waiting in this stream's queue (at most the
    /// [stream limit](crate::Builder::stream_limit); more may wait in the driver's queue).
    pub fn buffered(&self) -> usize {
        self.shared.lock().buffered
    }

    /// Bytes waiting in the driver's receive queue for this socket (a query to the driver
    /// thread). Bounded by the driver's receive quota, plus what one batch brings.
    pub async fn driver_queued(&self) -> io::Result<usize> {
        let (reply, rx) = oneshot::channel();
        self.sender.link.command(Cmd::Queued {
            key: self.sender.key,
            reply,
        })?;
        rx.await.map_err(|_| stopped())?
    }

    /// Queues `chunk` to send on this socket (from its own memory: a received chunk is sent
    /// without a copy). The chunk is queued when this is called, so sends keep the order of
    /// the calls whether or not their futures are awaited. The future resolves at once while
    /// less than the [stream limit](crate::Builder::stream_limit) waits to be sent (no round
    /// trip to the driver thread), else once the driver thread has sent enough (backpressure
    /// on the sender).
    ///
    /// `Ok` means queued, not delivered: a send that fails later (the peer reset the
    /// connection, say) makes this stream's later sends, waiting send futures and
    /// [`shutdown_write`](Self::shutdown_write) fail with its error. Sends fail at once after
    /// `shutdown_write` (`BrokenPipe`), once the stream is dropped (`NotConnected`, for a
    /// [`StreamSender`]) or once the driver thread has stopped.
    pub fn send(&self, chunk: Chunk) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.sender.send(chunk)
    }

    /// [`send`](Self::send) for bytes on the heap (not copied again).
    pub fn send_bytes(
        &self,
        bytes: Vec<u8>,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.sender.send_bytes(bytes)
    }

    /// Resolves once everything queued to send so far has been sent (or with the error that
    /// makes sends fail).
    pub fn flush(&self) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.sender.flush()
    }

    /// Hands the socket back: the driver stops receiving on it, waits (at most about a second)
    /// for its receive to end, and gives back the fd with what was received and not taken
    /// ([`Released::unread`], in order: read the socket after it). Sends not yet made are
    /// dropped ([`flush`](Self::flush) first to keep them); an end of stream or error already
    /// received is not kept (reading the socket tells again). The stream's
    /// [senders](StreamSender) fail with `NotConnected` from here on.
    ///
    /// Fails with `NotConnected` if the driver has closed the socket, `TimedOut` if its
    /// requests would not end in time (the driver then closes it), or the driver's error.
    pub async fn release(self) -> io::Result<Released> {
        let (reply, rx) = oneshot::channel();
        let sent = self.sender.link.command(Cmd::Release {
            key: self.sender.key,
            reply,
        });
        // The drop's `Close` comes after the release and finds the stream gone.
        drop(self);
        sent?;
        rx.await.map_err(|_| stopped())?
    }

    /// Shuts the write side down (the peer reads end of stream) once everything queued is
    /// sent. Receiving goes on.
    pub fn shutdown_write(&self) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.sender.shutdown_write()
    }

    /// Closes the socket now with a reset (SO_LINGER 0): what was queued to send is dropped,
    /// and the peer sees ECONNRESET rather than a clean end, so it cannot take a cut transfer
    /// for a complete one.
    pub fn reset(self) {
        self.shared.lock().close_sends();
        // If the driver thread has stopped, the socket is closed already. The `Close` of the
        // drop that follows finds the stream gone.
        let _ = self.sender.link.command(Cmd::Reset {
            key: self.sender.key,
        });
    }

    pub(crate) fn sender_ref(&self) -> &StreamSender {
        &self.sender
    }

    /// A handle that sends on this socket from another task. It fails with `NotConnected`
    /// once the stream is dropped.
    pub fn sender(&self) -> StreamSender {
        self.sender.clone()
    }

    /// An adapter yielding [`Bytes`]: each chunk wrapped with `Bytes::from_owner`, without a
    /// copy (the pool buffer goes back when the last `Bytes` of it is dropped).
    pub fn into_bytes_stream(self) -> BytesStream {
        BytesStream { inner: self }
    }

    /// Cuts the stream into frames by `framing` (a [`LengthPrefixed`](bufring::LengthPrefixed)
    /// or [`Delimited`](bufring::Delimited) framing): a stream of frames, each in place in
    /// its pool buffer when it lies in one (see [`Frames`](crate::Frames)).
    pub fn frames<F: bufring::Framing>(self, framing: F) -> crate::Frames<F> {
        crate::Frames::new(self, framing)
    }

    /// An [`AsyncRead`] adapter. It **copies** each chunk's bytes into the caller's
    /// [`ReadBuf`] (that is what `AsyncRead` asks for); use the stream itself, or
    /// [`into_bytes_stream`](Self::into_bytes_stream), to keep zero copy.
    pub fn into_async_read(self) -> ChunkReader {
        ChunkReader {
            inner: self,
            current: None,
        }
    }

    pub(crate) fn poll_chunk(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Chunk>>> {
        let mut st = self.shared.lock();
        if let Some(c) = st.queue.pop_front() {
            st.buffered -= c.len();
            st.taken = true;
            let limit = self.sender.link.limit;
            if st.want_pull && st.buffered <= limit / 2 {
                st.want_pull = false;
                drop(st);
                // If the driver thread has stopped, it has ended the stream already.
                let _ = self.sender.link.command(Cmd::Pull {
                    key: self.sender.key,
                });
            }
            return Poll::Ready(Some(Ok(c)));
        }
        match st.end.take() {
            Some(end) => {
                st.finished = true;
                Poll::Ready(end.err().map(Err))
            }
            None if st.finished => Poll::Ready(None),
            None => {
                match &st.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => st.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl Stream for RecvStream {
    type Item = io::Result<Chunk>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_chunk(cx)
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        self.shared.lock().close_sends();
        // If the driver thread has stopped, the socket is closed already.
        let _ = self.sender.link.command(Cmd::Close {
            key: self.sender.key,
        });
    }
}

/// Sends on a [`RecvStream`]'s socket from anywhere (`Clone + Send + Sync`).
#[derive(Clone)]
pub struct StreamSender {
    link: Arc<Link>,
    key: u64,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StreamSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSender")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl StreamSender {
    /// See [`RecvStream::send`].
    pub fn send(&self, chunk: Chunk) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.queue(Ok(chunk))
    }

    /// See [`RecvStream::send_bytes`].
    pub fn send_bytes(
        &self,
        bytes: Vec<u8>,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let chunk = Chunk::try_from(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "more than 4 GiB at once"));
        self.queue(chunk)
    }

    /// Queues the send now (counting its bytes as unsent first, so that the driver thread's
    /// count of sent bytes never runs ahead), and returns the wait for room.
    fn queue(
        &self,
        chunk: io::Result<Chunk>,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.queue_to(chunk, None)
    }

    /// [`queue`](Self::queue), as a datagram to `to` if given.
    pub(crate) fn queue_to(
        &self,
        chunk: io::Result<Chunk>,
        to: Option<std::net::SocketAddr>,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let queued = chunk.and_then(|chunk| {
            let mut st = self.shared.lock();
            if let Some(e) = st.send_refused() {
                return Err(e);
            }
            st.unsent += chunk.len();
            drop(st);
            self.link.command(match to {
                None => Cmd::Send {
                    key: self.key,
                    chunk,
                },
                Some(to) => Cmd::SendTo {
                    key: self.key,
                    chunk,
                    to,
                },
            })
        });
        let shared = Arc::clone(&self.shared);
        let limit = self.link.limit;
        async move {
            queued?;
            std::future::poll_fn(|cx| shared.lock().poll_room(cx, limit)).await
        }
    }

    /// See [`RecvStream::flush`].
    pub fn flush(&self) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        std::future::poll_fn(move |cx| shared.lock().poll_flushed(cx))
    }

    /// See [`RecvStream::shutdown_write`].
    pub fn shutdown_write(&self) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = {
            let mut st = self.shared.lock();
            match st.send_refused() {
                Some(e) if !st.write_shut => Err(e),
                _ => {
                    st.write_shut = true;
                    Ok(())
                }
            }
        };
        let sent = sent.and_then(|()| {
            self.link.command(Cmd::Shutdown {
                key: self.key,
                reply: tx,
            })
        });
        async move {
            sent?;
            rx.await.map_err(|_| stopped())?
        }
    }
}

/// A [`RecvStream`] yielding [`Bytes`] (zero copy: `Bytes::from_owner(chunk)`).
#[derive(Debug)]
pub struct BytesStream {
    inner: RecvStream,
}

impl BytesStream {
    /// The stream of chunks back.
    pub fn into_inner(self) -> RecvStream {
        self.inner
    }

    /// The stream of chunks, to send or query through.
    pub fn get_ref(&self) -> &RecvStream {
        &self.inner
    }
}

impl Stream for BytesStream {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner
            .poll_chunk(cx)
            .map(|item| item.map(|r| r.map(Bytes::from_owner)))
    }
}

/// An [`AsyncRead`] over a [`RecvStream`] that copies chunk bytes into the caller's buffer
/// (see [`RecvStream::into_async_read`]). A reset is an error once, then end of file.
#[derive(Debug)]
pub struct ChunkReader {
    inner: RecvStream,
    current: Option<Chunk>,
}

impl ChunkReader {
    /// The stream of chunks, to send or query through.
    pub fn get_ref(&self) -> &RecvStream {
        &self.inner
    }
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(c) = &mut this.current {
                let n = c.len().min(buf.remaining());
                buf.put_slice(&c[..n]);
                if n == c.len() {
                    this.current = None;
                } else {
                    c.advance(n);
                }
                return Poll::Ready(Ok(()));
            }
            match this.inner.poll_chunk(cx) {
                Poll::Ready(Some(Ok(c))) if c.is_empty() => {}
                Poll::Ready(Some(Ok(c))) => this.current = Some(c),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
