//! A model of the kernel's side of a provided buffer ring, for tests (feature `model`, never in
//! the default build). It reads the ring memory a [`Pool`](crate::Pool) writes the way the
//! kernel does (tail with acquire, a private head, entries field by field), selects and commits
//! buffers for receives (classic and incremental rules, `min_left`, bundles, ENOBUFS when
//! empty, multishot ending), rewrites incremental entries, writes the data into the buffers and
//! produces the CQEs. Written from the kernel facts in the project's notes and checked against
//! the running kernel by `tests/model_vs_kernel.rs`.
//!
//! Build a pool with [`PoolBuilder::build_detached`](crate::PoolBuilder::build_detached), wrap
//! the returned [`ModelRing`] in a [`KernelModel`], and let [`KernelModel::run`] play a
//! multishot receive on a [`ModelSocket`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use crate::chunk::Shared;
use crate::mem::Mmap;
use crate::ring::RingEntry;
use crate::sys::IoUringBuf;

// The CQE flags the model sets (the io-uring crate decodes them but does not export them).
const IORING_CQE_F_BUFFER: u32 = 1 << 0;
const IORING_CQE_F_MORE: u32 = 1 << 1;
const IORING_CQE_F_BUF_MORE: u32 = 1 << 4;
const IORING_CQE_BUFFER_SHIFT: u32 = 16;

pub mod hostile;

/// The most buffers one bundle maps (the kernel's PEEK_MAX_IMPORT).
pub const BUNDLE_MAX_BUFS: usize = 256;

/// The model's view of a detached pool's ring: a second mapping of the ring memory, and the
/// bounds of the buffer region the entries may point into. Made by
/// [`PoolBuilder::build_detached`](crate::PoolBuilder::build_detached).
pub struct ModelRing {
    mem: Mmap,
    entries: u32,
    mask: u16,
    start: u16,
    incremental: bool,
    min_left: u32,
    base: usize,
    region_len: usize,
    buf_len: u32,
    count: u32,
    // Keeps the buffer region mapped while the model may write into it.
    _shared: Arc<Shared>,
}

impl fmt::Debug for ModelRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelRing")
            .field("entries", &self.entries)
            .field("incremental", &self.incremental)
            .field("min_left", &self.min_left)
            .field("tail", &self.tail())
            .finish()
    }
}

impl ModelRing {
    pub(crate) fn new(
        mem: Mmap,
        entries: u32,
        start: u16,
        incremental: bool,
        min_left: u32,
        shared: Arc<Shared>,
        count: u32,
    ) -> Self {
        let base = shared.buf_addr(0) as usize;
        let buf_len = shared.buf_len;
        ModelRing {
            mem,
            entries,
            mask: (entries - 1) as u16,
            start,
            incremental,
            min_left,
            base,
            region_len: count as usize * buf_len as usize,
            buf_len,
            count,
            _shared: shared,
        }
    }

    /// Ring entries.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Whether the ring consumes buffers incrementally.
    pub fn is_incremental(&self) -> bool {
        self.incremental
    }

    /// The ring's `min_left` (0: none).
    pub fn min_left(&self) -> u32 {
        self.min_left
    }

    /// Buffers in the pool.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Length of each buffer.
    pub fn buf_len(&self) -> u32 {
        self.buf_len
    }

    /// The address of buffer `bid`'s first byte.
    pub fn buf_addr(&self, bid: u16) -> u64 {
        (self.base + bid as usize * self.buf_len as usize) as u64
    }

    fn tail_atomic(&self) -> &AtomicU16 {
        // SAFETY: the tail is the u16 at byte 14 of the ring memory (bufs[0].resv); the mapping
        // is page aligned, lives as long as `self`, and the tail is only accessed atomically.
        unsafe { &*self.mem.as_ptr().add(14).cast::<AtomicU16>() }
    }

    /// The tail as the kernel reads it: an acquire load, so the entries below it are visible.
    pub fn tail(&self) -> u16 {
        self.tail_atomic().load(Ordering::Acquire)
    }

    fn slot(&self, index: u16) -> *mut IoUringBuf {
        // SAFETY: `index & mask < entries`, so the slot lies inside the mapping.
        unsafe {
            self.mem
                .as_ptr()
                .cast::<IoUringBuf>()
                .add((index & self.mask) as usize)
        }
    }

    /// Entry `index & mask`, read field by field like the kernel's READ_ONCE (`resv` is left 0:
    /// in entry 0 it is the tail).
    pub fn entry(&self, index: u16) -> RingEntry {
        let e = self.slot(index);
        // SAFETY: the slot is inside the mapping; volatile reads of plain integers.
        unsafe {
            RingEntry {
                addr: std::ptr::addr_of!((*e).addr).read_volatile(),
                len: std::ptr::addr_of!((*e).len).read_volatile(),
                bid: std::ptr::addr_of!((*e).bid).read_volatile(),
            }
        }
    }

    /// Rewrites addr and len of entry `index`, as the kernel's incremental commit does.
    fn rewrite(&self, index: u16, addr: u64, len: u32) {
        let e = self.slot(index);
        // SAFETY: the slot is inside the mapping; the fields are written one by one so the tail
        // in entry 0 is never touched.
        unsafe {
            std::ptr::addr_of_mut!((*e).addr).write_volatile(addr);
            std::ptr::addr_of_mut!((*e).len).write_volatile(len);
        }
    }

    /// Copies received bytes to `addr`, after checking that they land inside the pool's
    /// buffer region (the kernel would write wherever the entry points).
    fn write(&self, bid: u16, addr: u64, data: &[u8]) -> Result<(), ModelError> {
        let start = addr as usize;
        let inside = start >= self.base
            && start
                .checked_add(data.len())
                .is_some_and(|end| end <= self.base + self.region_len);
        if !inside {
            return Err(ModelError::OutsideRegion {
                bid,
                addr,
                len: data.len(),
            });
        }
        // SAFETY: the range lies inside the region, which `_shared` keeps mapped. The pool
        // hands out chunks only over bytes that were committed in a completion, and the entry
        // offers only bytes after them, so no chunk covers the range (the property tests check
        // exactly that before every receive).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), start as *mut u8, data.len()) };
        Ok(())
    }
}

/// Something the pool wrote into the ring that the kernel could not have accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// An entry points outside the pool's buffer region.
    OutsideRegion {
        /// The entry's bid.
        bid: u16,
        /// Where the write would start.
        addr: u64,
        /// How many bytes.
        len: usize,
    },
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::OutsideRegion { bid, addr, len } => write!(
                f,
                "entry for bid {bid} points outside the buffer region ({len} bytes at {addr:#x})"
            ),
        }
    }
}

impl std::error::Error for ModelError {}

/// A completion as the kernel posts it (the crate's own [`Cqe`](crate::Cqe)).
pub use crate::Cqe;

/// One receive the model carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The completion, without F_MORE (the caller knows whether the request goes on).
    pub cqe: Cqe,
    /// Bytes taken from the input.
    pub used: usize,
    /// Bytes of buffer space the kernel offered (mapped) for this receive.
    pub mapped: usize,
    /// Bundles: the kernel mapped every posted entry (REQ_F_BL_EMPTY), which ends a multishot.
    pub ring_emptied: bool,
}

/// The kernel's side of one buffer ring: the private head and the select/commit rules.
#[derive(Debug)]
pub struct KernelModel {
    ring: ModelRing,
    head: u16,
}

impl KernelModel {
    /// A model whose head starts where the ring's tail started.
    pub fn new(ring: ModelRing) -> Self {
        let head = ring.start;
        KernelModel { ring, head }
    }

    /// The ring underneath.
    pub fn ring(&self) -> &ModelRing {
        &self.ring
    }

    /// The kernel's private head.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The tail (acquire load).
    pub fn tail(&self) -> u16 {
        self.ring.tail()
    }

    /// Published entries not yet consumed: `tail - head`.
    pub fn available(&self) -> u16 {
        self.tail().wrapping_sub(self.head)
    }

    /// The entries the kernel holds now, head first: `(index, entry)`. Their `[addr, addr+len)`
    /// ranges are all the model may still write.
    pub fn posted(&self) -> Vec<(u16, RingEntry)> {
        let n = self.available();
        (0..n)
            .map(|i| {
                let idx = self.head.wrapping_add(i);
                (idx, self.ring.entry(idx))
            })
            .collect()
    }

    /// One single-buffer receive (recv, or one round of a multishot recv) of at most `max_len`
    /// bytes (0: the whole buffer) from `data`. `None` when the ring is empty: the request
    /// fails with -ENOBUFS. An empty `data` is a 0-byte completion with the buffer (a read at
    /// end of file): a classic ring still consumes the entry, an incremental one keeps it
    /// current (F_BUF_MORE).
    pub fn recv(&mut self, data: &[u8], max_len: u32) -> Result<Option<Received>, ModelError> {
        let tail = self.tail();
        if tail == self.head {
            return Ok(None);
        }
        let e = self.ring.entry(self.head);
        let mut len = e.len;
        if max_len != 0 && max_len < len {
            len = max_len;
        }
        let n = (len as usize).min(data.len());
        self.ring.write(e.bid, e.addr, &data[..n])?;
        let mut flags = IORING_CQE_F_BUFFER | (u32::from(e.bid) << IORING_CQE_BUFFER_SHIFT);
        if !self.commit(n as u32, 1) {
            flags |= IORING_CQE_F_BUF_MORE;
        }
        Ok(Some(Received {
            cqe: Cqe {
                result: n as i32,
                flags,
            },
            used: n,
            mapped: len as usize,
            ring_emptied: false,
        }))
    }

    /// One round of a bundle receive, as the kernel's buffer peek does it: the head buffer
    /// from its current address, then the next entries in ring order.
    ///
    /// How many entries it maps: with a length hint `max_len` (the bytes the kernel knows wait
    /// in the socket; 0 for none) enough to hold it (at most 256), growing the request's iovec
    /// array `iovs` when it needs more; without a hint as many as `iovs` holds (1 at first).
    /// On a classic ring an entry longer than what is left of the hint is cut: the first one by
    /// rewriting its len, a later one by not mapping it. The round empties the ring (which ends
    /// a multishot) when it mapped up to the tail. `None` when the ring is empty.
    pub fn recv_bundle(
        &mut self,
        data: &[u8],
        max_len: usize,
        iovs: &mut usize,
    ) -> Result<Option<Received>, ModelError> {
        let tail = self.tail();
        let avail = (tail.wrapping_sub(self.head) as usize).min(1024);
        if avail == 0 {
            return Ok(None);
        }
        let first = self.ring.entry(self.head);
        let mut nr_avail = avail;
        if max_len != 0 {
            if first.len == 0 {
                return Ok(None);
            }
            let needed = max_len.div_ceil(first.len as usize).min(BUNDLE_MAX_BUFS);
            nr_avail = nr_avail.min(needed);
        }
        let mut nr = *iovs;
        let mut grown = false;
        if nr_avail > nr && max_len != 0 {
            nr = nr_avail;
            grown = true;
        } else if nr_avail < nr {
            nr = nr_avail;
        }
        let mut left = if max_len == 0 {
            i32::MAX as usize
        } else {
            max_len
        };
        let mut head = self.head;
        let mut mapped: Vec<(u16, u64, usize)> = Vec::new();
        loop {
            let e = self.ring.entry(head);
            let mut len = e.len as usize;
            if len > left {
                len = left;
                if !self.ring.incremental {
                    if !mapped.is_empty() {
                        break;
                    }
                    self.ring.rewrite(head, e.addr, len as u32);
                }
            }
            mapped.push((e.bid, e.addr, len));
            left -= len;
            if left == 0 {
                break;
            }
            head = head.wrapping_add(1);
            nr -= 1;
            if nr == 0 {
                break;
            }
        }
        if grown {
            *iovs = mapped.len();
        }
        let ring_emptied = head == tail;
        // Receive into the mapped buffers in order.
        let mut rest = data;
        let mut total = 0usize;
        let mut touched = 0u16;
        for &(bid, addr, len) in &mapped {
            if rest.is_empty() {
                break;
            }
            let n = len.min(rest.len());
            self.ring.write(bid, addr, &rest[..n])?;
            rest = &rest[n..];
            total += n;
            touched += 1;
        }
        let mut flags = IORING_CQE_F_BUFFER | (u32::from(first.bid) << IORING_CQE_BUFFER_SHIFT);
        if !self.commit(total as u32, touched) {
            flags |= IORING_CQE_F_BUF_MORE;
        }
        Ok(Some(Received {
            cqe: Cqe {
                result: total as i32,
                flags,
            },
            used: total,
            mapped: mapped.iter().map(|m| m.2).sum(),
            ring_emptied,
        }))
    }

    /// Commits `len` bytes over `nr` buffers; `false` means the head buffer stays current
    /// (F_BUF_MORE).
    fn commit(&mut self, len: u32, nr: u16) -> bool {
        if !self.ring.incremental {
            self.head = self.head.wrapping_add(nr);
            return true;
        }
        // Incremental: nothing consumed leaves the buffer current.
        if len == 0 {
            return false;
        }
        let min_left_sub_one = self.ring.min_left.saturating_sub(1);
        let mut len = len;
        while len > 0 {
            let e = self.ring.entry(self.head);
            let this = len.min(e.len);
            let left = e.len - this;
            if left > min_left_sub_one || this == 0 {
                self.ring
                    .rewrite(self.head, e.addr.wrapping_add(u64::from(this)), left);
                return false;
            }
            // Used up (or fewer than min_left bytes remain): retire it.
            self.ring.rewrite(self.head, e.addr, 0);
            self.head = self.head.wrapping_add(1);
            len -= this;
        }
        true
    }

    /// Plays the armed receive of `sock` for as long as the kernel would without new events:
    /// every CQE it posts, in order. See [`ModelSocket`] for the rules.
    pub fn run(&mut self, sock: &mut ModelSocket) -> Result<Vec<Cqe>, ModelError> {
        let mut out = Vec::new();
        while let Some(kind) = sock.armed {
            if !sock.wake {
                break;
            }
            // The kernel selects a buffer before it looks at the socket.
            if self.available() == 0 {
                out.push(Cqe {
                    result: -libc::ENOBUFS,
                    flags: 0,
                });
                sock.armed = None;
                break;
            }
            if sock.data.is_empty() {
                if sock.eof && sock.file && kind == RecvKind::Single {
                    // A single read at end of file completes with the buffer it selected:
                    // 0 bytes committed (a classic ring consumes the entry, an incremental one
                    // keeps it current).
                    let r = self.recv(&[], 0)?.expect("a buffer was available");
                    out.push(r.cqe);
                    sock.armed = None;
                } else if sock.eof {
                    // End of stream: the buffer goes back untouched, no F_BUFFER.
                    out.push(Cqe {
                        result: 0,
                        flags: 0,
                    });
                    sock.armed = None;
                } else {
                    sock.wake = false;
                }
                break;
            }
            let cqe = match kind {
                RecvKind::Single => {
                    let r = self
                        .recv(sock.data.make_contiguous(), 0)?
                        .expect("a buffer was available");
                    sock.take(r.used);
                    // One completion, and the request is done.
                    out.push(r.cqe);
                    sock.armed = None;
                    break;
                }
                RecvKind::Multishot => {
                    let r = self
                        .recv(sock.data.make_contiguous(), 0)?
                        .expect("a buffer was available");
                    sock.take(r.used);
                    r.cqe
                }
                RecvKind::Bundle => {
                    let r = self.bundle_round(sock)?;
                    let mut res = r.used;
                    let mut flags = r.cqe.flags;
                    let mut emptied = r.ring_emptied;
                    // A full transfer with more waiting is retried once and appended to the
                    // same completion.
                    if !emptied && sock.msg_inq > 1 && r.used > 0 && r.used == r.mapped {
                        let r2 = self.bundle_round(sock)?;
                        res += r2.used;
                        flags = (flags & !IORING_CQE_F_BUF_MORE)
                            | (r2.cqe.flags & IORING_CQE_F_BUF_MORE);
                        emptied = r2.ring_emptied;
                    }
                    let cqe = Cqe {
                        result: res as i32,
                        flags,
                    };
                    if emptied {
                        // Every posted entry was mapped: the multishot ends, with the data.
                        out.push(cqe);
                        sock.armed = None;
                        break;
                    }
                    cqe
                }
            };
            out.push(Cqe {
                result: cqe.result,
                flags: cqe.flags | IORING_CQE_F_MORE,
            });
            if sock.data.is_empty() && !sock.eof {
                sock.wake = false;
            }
        }
        Ok(out)
    }
}

impl KernelModel {
    /// One bundle round on the socket's data, with the kernel's length hint (the bytes left
    /// after the previous receive of this request, when more than 1).
    fn bundle_round(&mut self, sock: &mut ModelSocket) -> Result<Received, ModelError> {
        let hint = if sock.msg_inq > 1 {
            sock.msg_inq as usize
        } else {
            0
        };
        let data = sock.data.make_contiguous();
        let r = self
            .recv_bundle(data, hint, &mut sock.iovs)?
            .expect("a buffer was available");
        sock.take(r.used);
        Ok(r)
    }
}

/// Which receive is armed on a [`ModelSocket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvKind {
    /// A single recv (or read): one completion, then the request is done.
    Single,
    /// A multishot recv (or READ_MULTISHOT): one buffer per completion.
    Multishot,
    /// A multishot recv bundle: one completion may span several buffers.
    Bundle,
}

/// A stream socket as the model sees it: bytes waiting, end of stream, and the receive armed
/// on it.
///
/// The rules the model follows (checked against the kernel):
/// - an armed receive tries when armed and whenever data or end of stream arrives;
/// - a try selects a buffer first: an empty ring ends the request with -ENOBUFS (even at end
///   of stream), and the data stays in the socket;
/// - with a buffer and data, it receives `min(buffer, data)` bytes and posts a CQE with F_MORE,
///   then tries again while data is left;
/// - with a buffer and no data it waits, except at end of stream: res 0, no buffer, request
///   ends (a single read of a pipe keeps its buffer: see [`ModelSocket::pipe`]).
#[derive(Debug)]
pub struct ModelSocket {
    data: VecDeque<u8>,
    eof: bool,
    armed: Option<RecvKind>,
    wake: bool,
    msg_inq: i64,
    iovs: usize,
    file: bool,
}

impl Default for ModelSocket {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelSocket {
    /// An empty, open socket with nothing armed.
    pub fn new() -> Self {
        ModelSocket {
            data: VecDeque::new(),
            eof: false,
            armed: None,
            wake: false,
            msg_inq: -1,
            iovs: 1,
            file: false,
        }
    }

    /// A pipe read with READ / READ_MULTISHOT instead of a socket: the same rules, except that
    /// a single read at end of file completes with its buffer (res 0, F_BUFFER).
    pub fn pipe() -> Self {
        ModelSocket {
            file: true,
            ..Self::new()
        }
    }

    /// The peer wrote `bytes`.
    pub fn write(&mut self, bytes: &[u8]) {
        self.data.extend(bytes);
        self.wake = true;
    }

    /// The peer shut down its sending side.
    pub fn shutdown(&mut self) {
        self.eof = true;
        self.wake = true;
    }

    /// Submits a multishot receive of `kind`. The model plays one request per socket: panics
    /// if one is still armed.
    pub fn arm(&mut self, kind: RecvKind) {
        assert!(
            self.armed.is_none(),
            "the model plays one receive per socket; {:?} is still armed",
            self.armed
        );
        self.armed = Some(kind);
        self.wake = true;
        self.msg_inq = -1;
        self.iovs = 1;
    }

    fn take(&mut self, n: usize) {
        self.data.drain(..n);
        self.msg_inq = self.data.len() as i64;
    }

    /// The armed receive, if one is active.
    pub fn armed(&self) -> Option<RecvKind> {
        self.armed
    }

    /// Bytes waiting in the socket.
    pub fn queued(&self) -> usize {
        self.data.len()
    }
}
