//! recvmsg multishot for datagram sockets: [`RecvMsg`] owns the `msghdr` the kernel reads and
//! builds the SQE; its [`parse`](RecvMsg::parse) checks what the kernel wrote into a pool
//! buffer (`io_uring_recvmsg_out`, name, control messages, payload) and splits it into a
//! [`Datagram`] without copying the payload.

use std::fmt;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use io_uring::{opcode, squeue, types};

use crate::chunk::Chunk;
use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::pool::Target;

/// `sizeof(struct io_uring_recvmsg_out)`: namelen, controllen, payloadlen, flags (u32 each).
pub(crate) const OUT_LEN: u32 = 16;
/// The longest socket address there is (`sizeof(struct sockaddr_storage)`).
const MAX_NAME_LEN: u32 = size_of::<libc::sockaddr_storage>() as u32;
/// `sizeof(struct cmsghdr)` and the alignment of control messages (`CMSG_ALIGN`).
const CMSG_HDR: usize = size_of::<libc::cmsghdr>();
const CMSG_ALIGN: usize = size_of::<usize>();

/// The settings of a recvmsg multishot (IORING_OP_RECVMSG with IORING_RECV_MULTISHOT, Linux
/// 6.0) on a datagram socket, and the owner of the `msghdr` the kernel reads them from.
///
/// The kernel writes each datagram into one pool buffer as
/// `[io_uring_recvmsg_out (16 bytes)][name: name_len bytes][control: control_len bytes][payload]`
/// where the name and control areas have the fixed sizes given here; [`parse`](Self::parse)
/// turns such a buffer into a [`Datagram`]. A buffer shorter than
/// [`header_len`](Self::header_len) fails the multishot with `EFAULT`, so the pool's buffers
/// must be longer than that (checked by [`multishot`](Self::multishot)).
///
/// Keep the `RecvMsg` alive until the request has ended, like the pool itself. Moving it is
/// fine: the `msghdr` lives on the heap.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// use bufring::{Completion, Pool, RecvMsg};
/// let mut ring = io_uring::IoUring::new(64)?;
/// let mut pool = Pool::builder(0).count(64).buf_len(2048).build(&ring)?;
/// let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// let msg = RecvMsg::new(RecvMsg::INET6_NAME_LEN, 64)?; // v4 and v6 sources, 64 bytes of cmsgs
/// // SAFETY: `pool` and `msg` outlive the request.
/// unsafe { ring.submission().push(&msg.multishot(&pool, sock.as_raw_fd())?)? };
/// ring.submit_and_wait(1)?;
/// let cqe = ring.completion().next().unwrap();
/// // SAFETY: the CQE was just reaped from the ring the pool is registered on, for the request
/// // above, and goes to the pool once.
/// if let Completion::Data { chunks, .. } = unsafe { pool.complete(&cqe)? } {
///     for chunk in chunks {
///         let dgram = msg.parse(chunk)?;
///         println!("{:?} sent {} bytes", dgram.source(), dgram.payload().len());
///     }
/// }
/// # Ok(()) }
/// ```
pub struct RecvMsg {
    /// Heap-allocated so its address stays put when the `RecvMsg` moves.
    msghdr: Box<libc::msghdr>,
    name_len: u32,
    control_len: u32,
    msg_flags: u32,
}

// SAFETY: the msghdr holds only null pointers and lengths; nothing is shared or aliased.
unsafe impl Send for RecvMsg {}
// SAFETY: as above; `&RecvMsg` only reads plain integers.
unsafe impl Sync for RecvMsg {}

impl fmt::Debug for RecvMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvMsg")
            .field("name_len", &self.name_len)
            .field("control_len", &self.control_len)
            .field("msg_flags", &self.msg_flags)
            .finish()
    }
}

impl RecvMsg {
    /// Name area for IPv4 sources (`sizeof(struct sockaddr_in)`).
    pub const INET_NAME_LEN: u32 = size_of::<libc::sockaddr_in>() as u32;
    /// Name area for IPv4 and IPv6 sources (`sizeof(struct sockaddr_in6)`).
    pub const INET6_NAME_LEN: u32 = size_of::<libc::sockaddr_in6>() as u32;

    /// A recvmsg multishot that reserves `name_len` bytes for the source address (0: none;
    /// at most 128, `sizeof(struct sockaddr_storage)`) and `control_len` bytes for control
    /// messages (0: none) in front of every payload.
    ///
    /// The receive flags default to `MSG_TRUNC`, which on datagram sockets makes the kernel
    /// report a datagram's full length even when the buffer cut it short (see
    /// [`Datagram::payload_len`]). Do not use it on stream sockets (there `MSG_TRUNC`
    /// discards data).
    pub fn new(name_len: u32, control_len: u32) -> Result<RecvMsg> {
        if name_len > MAX_NAME_LEN {
            return Err(Error::config(
                "name_len",
                format!("{name_len} bytes; no socket address is longer than {MAX_NAME_LEN}"),
            ));
        }
        if control_len > i32::MAX as u32 - OUT_LEN - MAX_NAME_LEN {
            return Err(Error::config(
                "control_len",
                format!("{control_len} bytes overflows the kernel's header arithmetic"),
            ));
        }
        // SAFETY: msghdr is plain old data; all-zero is a valid value (null pointers, 0 lengths).
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        // Only the lengths matter to a buffer-select multishot: the kernel writes name and
        // control into the selected buffer. No iovec (msg_iovlen 0): the whole buffer is used.
        msghdr.msg_namelen = name_len;
        msghdr.msg_controllen = control_len as _;
        Ok(RecvMsg {
            msghdr,
            name_len,
            control_len,
            msg_flags: libc::MSG_TRUNC as u32,
        })
    }

    /// Replaces the `recvmsg` flags (default `MSG_TRUNC`). `MSG_WAITALL` is refused by the
    /// kernel for multishot requests.
    pub fn msg_flags(mut self, flags: u32) -> Self {
        self.msg_flags = flags;
        self
    }

    /// Bytes reserved for the source address.
    pub fn name_len(&self) -> u32 {
        self.name_len
    }

    /// Bytes reserved for control messages.
    pub fn control_len(&self) -> u32 {
        self.control_len
    }

    /// Bytes in front of every payload: 16 + `name_len` + `control_len`.
    pub fn header_len(&self) -> u32 {
        OUT_LEN + self.name_len + self.control_len
    }

    /// A `min_left` for an incremental pool that takes datagrams of up to `max_payload` bytes
    /// whole: the kernel retires a buffer as soon as the rest could not hold the header and
    /// such a datagram. (Any `min_left >= header_len()` avoids `EFAULT`; smaller values than
    /// this one let a datagram land truncated in a buffer's tail.)
    pub fn min_left_for(&self, max_payload: u32) -> u32 {
        self.header_len().saturating_add(max_payload)
    }

    /// Whether `pool` can serve this request without the multishot failing on a short buffer:
    /// every buffer holds the header, and on an incremental pool the kernel retires a tail
    /// shorter than the header (`min_left >= header_len()`).
    ///
    /// An incremental pool without `min_left` is refused with [`Error::InvalidConfig`] (field
    /// `min_left`): a small tail would end the multishot with `EFAULT`. Kernels without
    /// `min_left` (before Linux 7.0, unless backported) refuse a pool that asks for it with
    /// [`Error::Unsupported`]; there, use a classic pool for recvmsg.
    pub fn check_pool(&self, pool: &Pool) -> Result<()> {
        let header = self.header_len();
        if pool.buf_len() <= header {
            return Err(Error::config(
                "buf_len",
                format!(
                    "{}-byte buffers cannot hold a {header}-byte recvmsg header and any payload",
                    pool.buf_len()
                ),
            ));
        }
        if pool.is_incremental() && incremental_min_left(pool) < header {
            return Err(Error::config(
                "min_left",
                format!(
                    "recvmsg multishot on an incremental pool needs min_left >= {header} (the \
                     recvmsg header), or a buffer tail shorter than the header fails the \
                     multishot with EFAULT; the pool has min_left {}. Build the pool with \
                     PoolBuilder::min_left (RecvMsg::min_left_for helps), or use a classic pool \
                     where the kernel lacks min_left",
                    incremental_min_left(pool)
                ),
            ));
        }
        Ok(())
    }

    /// The SQE of a recvmsg multishot on `fd` that selects buffers from `pool`, after
    /// [`check_pool`](Self::check_pool).
    ///
    /// Pushing it is `unsafe` for the usual reason: keep `pool` and this `RecvMsg` alive until
    /// the request has ended (a CQE without F_MORE) or been cancelled. Every CQE goes to
    /// [`Pool::complete`]; each chunk of a `Completion::Data` goes to [`parse`](Self::parse).
    pub fn multishot(&self, pool: &Pool, fd: impl Into<Target>) -> Result<squeue::Entry> {
        self.check_pool(pool)?;
        pool.built_stream();
        let msg: *const libc::msghdr = &*self.msghdr;
        let bgid = pool.bgid();
        Ok(match fd.into() {
            Target::Fd(fd) => opcode::RecvMsgMulti::new(types::Fd(fd), msg, bgid)
                .flags(self.msg_flags)
                .build(),
            Target::Fixed(i) => opcode::RecvMsgMulti::new(types::Fixed(i), msg, bgid)
                .flags(self.msg_flags)
                .build(),
        })
    }

    /// Checks the layout of one completion's chunk and splits it into a [`Datagram`]: the
    /// payload becomes its own chunk (no copy), name and control messages stay readable in
    /// place. Every length is checked against the chunk first; a layout that does not hold
    /// together gives [`Error::BadDatagram`] (the chunk is dropped, nothing else changes).
    pub fn parse(&self, mut chunk: Chunk) -> Result<Datagram> {
        let header = self.header_len() as usize;
        if chunk.len() < header {
            return Err(BadDatagram::Short {
                len: chunk.len(),
                header_len: header,
            }
            .into());
        }
        let word =
            |i: usize| u32::from_ne_bytes([chunk[i], chunk[i + 1], chunk[i + 2], chunk[i + 3]]);
        let (namelen, controllen, payloadlen, flags) = (word(0), word(4), word(8), word(12));
        if controllen > self.control_len {
            return Err(BadDatagram::ControlTooLong {
                controllen,
                capacity: self.control_len,
            }
            .into());
        }
        let received = chunk.len() - header;
        if received as u64 > u64::from(payloadlen) {
            return Err(BadDatagram::PayloadTooLong {
                received,
                payloadlen,
            }
            .into());
        }
        let control_at = (OUT_LEN + self.name_len) as usize;
        let control = &chunk[control_at..control_at + controllen as usize];
        let ctrunc = flags & libc::MSG_CTRUNC as u32 != 0;
        validate_cmsgs(control, ctrunc)?;
        let payload = chunk.split_off(header);
        Ok(Datagram {
            header: chunk,
            payload,
            name_cap: self.name_len,
            namelen,
            controllen,
            payloadlen,
            flags,
        })
    }
}

/// The shortest tail an incremental pool leaves for the kernel to select: the ring's
/// `min_left` (below it the kernel retires the buffer).
fn incremental_min_left(pool: &Pool) -> u32 {
    pool.min_left()
}

/// Walks the control messages once, so iterating them later cannot go wrong.
fn validate_cmsgs(control: &[u8], ctrunc: bool) -> Result<(), BadDatagram> {
    let mut pos = 0;
    while control.len() - pos >= CMSG_HDR {
        let len = cmsg_len(&control[pos..]);
        if len < CMSG_HDR as u64 {
            return Err(BadDatagram::BadControlMessage {
                offset: pos,
                cmsg_len: len,
            });
        }
        if len > (control.len() - pos) as u64 {
            // The kernel cuts the last message short when the control area is full, and says
            // so with MSG_CTRUNC. Anything else is not what the kernel writes.
            if ctrunc {
                return Ok(());
            }
            return Err(BadDatagram::BadControlMessage {
                offset: pos,
                cmsg_len: len,
            });
        }
        pos = next_cmsg(pos, len as usize).min(control.len());
    }
    Ok(())
}

/// `cmsg_len` of the message at the start of `b` (at least CMSG_HDR bytes long).
fn cmsg_len(b: &[u8]) -> u64 {
    let mut w = [0u8; CMSG_ALIGN];
    w.copy_from_slice(&b[..CMSG_ALIGN]);
    usize::from_ne_bytes(w) as u64
}

/// Where the message after one of `len` bytes at `pos` starts (`CMSG_NXTHDR`).
fn next_cmsg(pos: usize, len: usize) -> usize {
    pos.saturating_add(len.saturating_add(CMSG_ALIGN - 1) & !(CMSG_ALIGN - 1))
}

/// A recvmsg completion whose layout did not hold together; see [`RecvMsg::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadDatagram {
    /// The completion is shorter than the fixed header (16 + name + control bytes).
    Short {
        /// Bytes in the completion.
        len: usize,
        /// Bytes the header takes.
        header_len: usize,
    },
    /// `controllen` claims more control bytes than the control area holds.
    ControlTooLong {
        /// The `controllen` written in the buffer.
        controllen: u32,
        /// The control area's size.
        capacity: u32,
    },
    /// More payload bytes arrived than `payloadlen` says the datagram had.
    PayloadTooLong {
        /// Payload bytes in the completion.
        received: usize,
        /// The `payloadlen` written in the buffer.
        payloadlen: u32,
    },
    /// A control message header with an impossible length.
    BadControlMessage {
        /// Its offset in the control area.
        offset: usize,
        /// Its `cmsg_len`.
        cmsg_len: u64,
    },
}

impl fmt::Display for BadDatagram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BadDatagram::Short { len, header_len } => write!(
                f,
                "{len} bytes cannot hold the {header_len}-byte recvmsg header"
            ),
            BadDatagram::ControlTooLong {
                controllen,
                capacity,
            } => write!(
                f,
                "controllen {controllen} exceeds the {capacity}-byte control area"
            ),
            BadDatagram::PayloadTooLong {
                received,
                payloadlen,
            } => write!(
                f,
                "{received} payload bytes, but payloadlen says {payloadlen}"
            ),
            BadDatagram::BadControlMessage { offset, cmsg_len } => write!(
                f,
                "control message at offset {offset} has cmsg_len {cmsg_len}"
            ),
        }
    }
}

/// One datagram received by a recvmsg multishot: its source, control messages and payload.
///
/// The payload is a [`Chunk`] of the pool buffer, split off without copying; the name and
/// control messages are read in place from the rest of the buffer, which the datagram keeps
/// until it is dropped (or until [`into_payload`](Self::into_payload)).
pub struct Datagram {
    header: Chunk,
    payload: Chunk,
    name_cap: u32,
    namelen: u32,
    controllen: u32,
    payloadlen: u32,
    flags: u32,
}

impl fmt::Debug for Datagram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datagram")
            .field("source", &self.source())
            .field("payload", &self.payload)
            .field("payload_len", &self.payloadlen)
            .field("controllen", &self.controllen)
            .field("flags", &format_args!("{:#x}", self.flags))
            .finish()
    }
}

impl Datagram {
    /// The source address, for IPv4 and IPv6 senders. `None` when the socket gave no name,
    /// the name area was too small for it, or it is of another family (see
    /// [`name`](Self::name)).
    pub fn source(&self) -> Option<SocketAddr> {
        if self.is_name_truncated() {
            return None;
        }
        sockaddr(self.name())
    }

    /// The raw source address bytes the kernel stored (a `struct sockaddr_*`), at most the
    /// name area's size.
    pub fn name(&self) -> &[u8] {
        let n = self.namelen.min(self.name_cap) as usize;
        &self.header[OUT_LEN as usize..OUT_LEN as usize + n]
    }

    /// The source address's real length (`namelen` as the kernel reported it).
    pub fn name_len(&self) -> u32 {
        self.namelen
    }

    /// Whether the source address did not fit in the name area.
    pub fn is_name_truncated(&self) -> bool {
        self.namelen > self.name_cap
    }

    /// The control messages, in the order the kernel wrote them.
    ///
    /// When the control area was too small ([`is_control_truncated`](Self::is_control_truncated)),
    /// the kernel drops what does not fit and cuts the last message down to the room left,
    /// `cmsg_len` included: that message comes with its data cut short, so check a message's
    /// data length before decoding it. (A last message whose `cmsg_len` runs past the area,
    /// which the kernel does not write but a truncating writer might, is left out.)
    pub fn control(&self) -> ControlMessages<'_> {
        ControlMessages {
            bytes: self.control_bytes(),
            pos: 0,
        }
    }

    /// The control area as the kernel wrote it (`controllen` bytes).
    pub fn control_bytes(&self) -> &[u8] {
        let at = (OUT_LEN + self.name_cap) as usize;
        &self.header[at..at + self.controllen as usize]
    }

    /// Whether control messages were lost for lack of room (MSG_CTRUNC).
    pub fn is_control_truncated(&self) -> bool {
        self.flags & libc::MSG_CTRUNC as u32 != 0
    }

    /// The payload bytes that arrived, in the pool buffer (zero copy).
    pub fn payload(&self) -> &Chunk {
        &self.payload
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut Chunk {
        &mut self.payload
    }

    /// Keeps only the payload; the name and control bytes are released.
    pub fn into_payload(self) -> Chunk {
        self.payload
    }

    /// The datagram's length as the kernel reported it (`payloadlen`). With `MSG_TRUNC` in the
    /// receive flags (the default of [`RecvMsg`]) this is the full length even when the
    /// buffer cut the payload short.
    pub fn payload_len(&self) -> usize {
        self.payloadlen as usize
    }

    /// Whether the payload was cut short: fewer bytes arrived than the datagram had, or the
    /// kernel said MSG_TRUNC.
    pub fn is_truncated(&self) -> bool {
        self.payload.len() < self.payloadlen as usize || self.flags & libc::MSG_TRUNC as u32 != 0
    }

    /// The `msg_flags` of the receive (MSG_TRUNC, MSG_CTRUNC, ...).
    pub fn msg_flags(&self) -> u32 {
        self.flags
    }

    /// The socket's drop counter from an `SO_RXQ_OVFL` control message, if one came (the
    /// kernel sends it once datagrams have been dropped, with `SO_RXQ_OVFL` enabled).
    pub fn dropped(&self) -> Option<u32> {
        self.control()
            .find(|m| m.level == libc::SOL_SOCKET && m.ty == libc::SO_RXQ_OVFL)
            .and_then(|m| Some(u32::from_ne_bytes(m.data.get(..4)?.try_into().ok()?)))
    }
}

/// Decodes an IPv4 or IPv6 `struct sockaddr_*`.
fn sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(name.get(..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match i32::from(family) {
        libc::AF_INET if name.len() >= size_of::<libc::sockaddr_in>() => {
            let ip: [u8; 4] = name[4..8].try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 if name.len() >= size_of::<libc::sockaddr_in6>() => {
            let flowinfo = u32::from_be_bytes(name[4..8].try_into().ok()?);
            let ip: [u8; 16] = name[8..24].try_into().ok()?;
            let scope = u32::from_ne_bytes(name[24..28].try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flowinfo,
                scope,
            )))
        }
        _ => None,
    }
}

/// One control message (`struct cmsghdr` and its data), read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlMessage<'a> {
    /// `cmsg_level` (e.g. `libc::IPPROTO_IP`, `libc::SOL_SOCKET`).
    pub level: i32,
    /// `cmsg_type` (e.g. `libc::IP_PKTINFO`, `libc::SO_TIMESTAMP`).
    pub ty: i32,
    /// The data after the header (`cmsg_len - CMSG_LEN(0)` bytes, unaligned: copy fields out
    /// with `from_ne_bytes` or `read_unaligned`).
    pub data: &'a [u8],
}

/// Iterator over a [`Datagram`]'s control messages.
#[derive(Debug, Clone)]
pub struct ControlMessages<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for ControlMessages<'a> {
    type Item = ControlMessage<'a>;

    fn next(&mut self) -> Option<ControlMessage<'a>> {
        let rest = self.bytes.get(self.pos..)?;
        if rest.len() < CMSG_HDR {
            return None;
        }
        let len = cmsg_len(rest);
        // Checked by `parse`; a message cut short (MSG_CTRUNC) ends the walk.
        if len < CMSG_HDR as u64 || len > rest.len() as u64 {
            self.pos = self.bytes.len();
            return None;
        }
        let int = |i: usize| i32::from_ne_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        let msg = ControlMessage {
            level: int(CMSG_ALIGN),
            ty: int(CMSG_ALIGN + 4),
            data: &rest[CMSG_HDR..len as usize],
        };
        self.pos = next_cmsg(self.pos, len as usize);
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::test_chunks::Buffers;

    fn out(namelen: u32, controllen: u32, payloadlen: u32, flags: u32) -> Vec<u8> {
        [namelen, controllen, payloadlen, flags]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect()
    }

    fn cmsg(level: i32, ty: i32, data: &[u8]) -> Vec<u8> {
        let mut v = (CMSG_HDR + data.len()).to_ne_bytes().to_vec();
        v.extend_from_slice(&level.to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        v.resize(next_cmsg(0, v.len()), 0);
        v
    }

    fn sockaddr_in(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut v = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&port.to_be_bytes());
        v.extend_from_slice(&ip);
        v.resize(16, 0);
        v
    }

    /// A buffer laid out as the kernel does: header, name area, control area, payload.
    fn layout(msg: &RecvMsg, hdr: &[u8], name: &[u8], control: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut v = hdr.to_vec();
        let mut n = name.to_vec();
        n.resize(msg.name_len() as usize, 0xee);
        v.extend_from_slice(&n);
        let mut c = control.to_vec();
        c.resize(msg.control_len() as usize, 0xee);
        v.extend_from_slice(&c);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn parses_name_control_and_payload() {
        let b = Buffers::new(4, 1024);
        let msg = RecvMsg::new(RecvMsg::INET6_NAME_LEN, 64).unwrap();
        let pktinfo = cmsg(
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            &[1, 0, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1],
        );
        let ovfl = cmsg(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &7u32.to_ne_bytes());
        let control = [pktinfo.clone(), ovfl.clone()].concat();
        let bytes = layout(
            &msg,
            &out(16, control.len() as u32, 5, 0),
            &sockaddr_in([127, 0, 0, 1], 4242),
            &control,
            b"hello",
        );
        let d = msg.parse(b.chunk(0, 100, &bytes)).unwrap();
        assert_eq!(d.source(), Some("127.0.0.1:4242".parse().unwrap()));
        assert_eq!(&d.payload()[..], b"hello");
        assert_eq!(d.payload().offset(), 100 + msg.header_len());
        assert!(!d.is_truncated() && !d.is_control_truncated() && !d.is_name_truncated());
        let msgs: Vec<_> = d.control().collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            (msgs[0].level, msgs[0].ty),
            (libc::IPPROTO_IP, libc::IP_PKTINFO)
        );
        assert_eq!(msgs[0].data.len(), 12);
        assert_eq!(d.dropped(), Some(7));
        assert_eq!(&d.into_payload()[..], b"hello");
    }

    #[test]
    fn parses_ipv6_names_and_truncation() {
        let b = Buffers::new(4, 1024);
        let msg = RecvMsg::new(RecvMsg::INET6_NAME_LEN, 0).unwrap();
        let mut name = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        name.extend_from_slice(&9000u16.to_be_bytes());
        name.extend_from_slice(&5u32.to_be_bytes());
        name.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        name.extend_from_slice(&3u32.to_ne_bytes());
        let bytes = layout(
            &msg,
            &out(28, 0, 900, libc::MSG_TRUNC as u32),
            &name,
            &[],
            b"abc",
        );
        let d = msg.parse(b.chunk(1, 0, &bytes)).unwrap();
        assert_eq!(
            d.source(),
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::LOCALHOST,
                9000,
                5,
                3
            )))
        );
        assert!(d.is_truncated());
        assert_eq!(d.payload_len(), 900);
        assert_eq!(d.payload().len(), 3);

        // A name area too small for the address: raw bytes only, no SocketAddr.
        let small = RecvMsg::new(RecvMsg::INET_NAME_LEN, 0).unwrap();
        let bytes = layout(&small, &out(28, 0, 1, 0), &name[..16], &[], b"x");
        let d = small.parse(b.chunk(2, 0, &bytes)).unwrap();
        assert!(d.is_name_truncated());
        assert_eq!(d.source(), None);
        assert_eq!(d.name().len(), 16);
    }

    #[test]
    fn a_control_message_running_past_the_area_is_skipped_under_ctrunc() {
        let b = Buffers::new(4, 1024);
        let msg = RecvMsg::new(0, 24).unwrap();
        let full = cmsg(libc::IPPROTO_IP, libc::IP_PKTINFO, &[0; 12]); // 32 bytes
        let bytes = layout(
            &msg,
            &out(0, 24, 1, libc::MSG_CTRUNC as u32),
            &[],
            &full[..24],
            b"p",
        );
        let d = msg.parse(b.chunk(0, 0, &bytes)).unwrap();
        assert!(d.is_control_truncated());
        assert_eq!(d.control().count(), 0);
        assert_eq!(d.source(), None);
        // The same bytes without MSG_CTRUNC are not what the kernel writes.
        let bytes = layout(&msg, &out(0, 24, 1, 0), &[], &full[..24], b"p");
        let e = msg.parse(b.chunk(1, 0, &bytes)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::BadDatagram(BadDatagram::BadControlMessage {
                    offset: 0,
                    cmsg_len: 28
                })
            ),
            "{e}"
        );
    }

    #[test]
    fn forged_layouts_are_typed_errors() {
        let b = Buffers::new(8, 1024);
        let msg = RecvMsg::new(16, 32).unwrap();
        let bad = |bid: u16, bytes: &[u8]| match msg.parse(b.chunk(bid, 0, bytes)) {
            Err(Error::BadDatagram(e)) => e,
            other => panic!("accepted a forged layout: {other:?}"),
        };
        assert_eq!(
            bad(0, &[0; 20]),
            BadDatagram::Short {
                len: 20,
                header_len: 64
            }
        );
        assert_eq!(
            bad(1, &layout(&msg, &out(16, 33, 0, 0), &[], &[], b"")),
            BadDatagram::ControlTooLong {
                controllen: 33,
                capacity: 32
            }
        );
        assert_eq!(
            bad(2, &layout(&msg, &out(16, 0, 2, 0), &[], &[], b"abc")),
            BadDatagram::PayloadTooLong {
                received: 3,
                payloadlen: 2
            }
        );
        let mut zero_len = cmsg(1, 2, &[]);
        zero_len[..CMSG_ALIGN].fill(0);
        assert!(matches!(
            bad(3, &layout(&msg, &out(16, 16, 0, 0), &[], &zero_len, b"")),
            BadDatagram::BadControlMessage { cmsg_len: 0, .. }
        ));
        let mut huge = cmsg(1, 2, &[]);
        huge[..CMSG_ALIGN].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert!(matches!(
            bad(4, &layout(&msg, &out(16, 16, 0, 0), &[], &huge, b"")),
            BadDatagram::BadControlMessage { .. }
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        let b = Buffers::new(1, 4096);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let msg = RecvMsg::new(rnd() as u32 % 129, rnd() as u32 % 100).unwrap();
            let len = rnd() as usize % 300;
            let mut bytes: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            // Make the header plausible half the time so the deeper checks run too.
            if len >= 16 && rnd() % 2 == 0 {
                let ctl = rnd() as u32 % (msg.control_len() + 1);
                let pay = (len as u32).saturating_sub(msg.header_len()) + rnd() as u32 % 3;
                bytes[..16].copy_from_slice(&out(
                    rnd() as u32 % 140,
                    ctl,
                    pay,
                    rnd() as u32 & 0x28,
                ));
            }
            if let Ok(d) = msg.parse(b.chunk(0, 0, &bytes)) {
                let _ = d.source();
                let _ = d.name();
                let _ = d.dropped();
                for m in d.control() {
                    assert!(m.data.len() <= d.control_bytes().len());
                }
                assert!(d.payload().len() <= d.payload_len());
            }
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(RecvMsg::new(129, 0).is_err());
        assert!(RecvMsg::new(0, u32::MAX).is_err());
        let m = RecvMsg::new(28, 36).unwrap();
        assert_eq!(m.header_len(), 80);
        assert_eq!(m.min_left_for(1472), 1552);
    }
}
