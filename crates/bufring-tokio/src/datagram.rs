//! Datagram sockets: a [`DatagramSocket`] receives each datagram whole into a buffer of the
//! `Uring`'s datagram pool (a recvmsg multishot) and sends through the driver, to its
//! connected peer or to an address per datagram.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bufring::{Datagram, RecvMsg};
use futures_core::Stream;

use crate::{Chunk, RecvStream};

/// The layout of the datagram pool's receives: room for an IPv6 source, no control
/// messages. The driver's side receives with one, each socket parses with another.
pub(crate) fn layout() -> bufring::Result<RecvMsg> {
    RecvMsg::new(RecvMsg::INET6_NAME_LEN, 0)
}

/// The datagrams received on one socket (UDP, or a Unix datagram socket), as a [`Stream`] of
/// [`Datagram`]s, and its sends. Made by [`Uring::datagram_socket`](crate::Uring::datagram_socket).
///
/// - Each datagram arrives whole in one buffer of the `Uring`'s datagram pool
///   ([`Builder::datagram_buffers`](crate::Builder::datagram_buffers)); its
///   [payload](Datagram::payload) is a chunk of that buffer (no copy), its
///   [source](Datagram::source) is parsed for IP sockets. A datagram longer than a buffer
///   holds is cut short and says so ([`Datagram::is_truncated`]).
/// - Backpressure is the streams' (see the [crate docs](crate#backpressure)), counted in whole
///   messages: while the socket's queues are full the receive stops, and the kernel drops
///   what its socket buffer cannot hold, as UDP does.
/// - A receive error (on a connected UDP socket, `ECONNREFUSED` after the peer's port
///   closed) is one `Err` item, then the end.
/// - Each send is one datagram. A datagram that fails to go (too long: `EMSGSIZE`, say) is
///   dropped alone, and the next [`flush`](Self::flush) returns its error.
/// - Cancel-safe like [`RecvStream`]; dropping it closes the socket once what was queued to
///   send has gone.
pub struct DatagramSocket {
    inner: RecvStream,
    /// The layout the driver's datagram pool receives with (what `parse` checks against).
    msg: RecvMsg,
}

impl std::fmt::Debug for DatagramSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl DatagramSocket {
    pub(crate) fn new(inner: RecvStream, msg: RecvMsg) -> DatagramSocket {
        DatagramSocket { inner, msg }
    }

    /// The next datagram (what [`Stream::poll_next`] gives, as a future). Cancel-safe.
    pub async fn recv(&mut self) -> Option<io::Result<Datagram>> {
        std::future::poll_fn(|cx| self.poll_datagram(cx)).await
    }

    fn poll_datagram(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Datagram>>> {
        self.inner.poll_chunk(cx).map(|item| {
            item.map(|r| {
                r.and_then(|chunk| {
                    // The driver checked the completion; this checks the layout in the buffer
                    // (lengths the kernel wrote). One that does not hold together is an error
                    // item; the stream goes on.
                    self.msg
                        .parse(chunk)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                })
            })
        })
    }

    /// Bytes of received messages waiting in this socket's queue (headers included).
    pub fn buffered(&self) -> usize {
        self.inner.buffered()
    }

    /// Bytes of received messages waiting in the driver's receive queue for this socket (a
    /// query to the driver's side), as [`RecvStream::driver_queued`].
    pub async fn driver_queued(&self) -> io::Result<usize> {
        self.inner.driver_queued().await
    }

    /// Sends `chunk` as one datagram to the connected peer (a received payload goes without a
    /// copy). Queued when called; resolves as [`RecvStream::send`] does.
    pub fn send(&self, chunk: Chunk) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.inner.send(chunk)
    }

    /// [`send`](Self::send) for bytes on the heap.
    pub fn send_bytes(
        &self,
        bytes: Vec<u8>,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.inner.send_bytes(bytes)
    }

    /// Sends `chunk` as one datagram to `to`: how an unconnected server replies (to
    /// [`Datagram::source`]).
    pub fn send_to(
        &self,
        chunk: Chunk,
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.inner.sender_ref().queue_to(Ok(chunk), Some(to))
    }

    /// [`send_to`](Self::send_to) for bytes on the heap.
    pub fn send_bytes_to(
        &self,
        bytes: Vec<u8>,
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let chunk = Chunk::try_from(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "more than 4 GiB at once"));
        self.inner.sender_ref().queue_to(chunk, Some(to))
    }

    /// Resolves once everything queued to send has gone; with the error of a datagram that
    /// failed since the last flush, if one did (that datagram was dropped).
    pub fn flush(&self) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.inner.flush()
    }
}

impl Stream for DatagramSocket {
    type Item = io::Result<Datagram>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_datagram(cx)
    }
}
