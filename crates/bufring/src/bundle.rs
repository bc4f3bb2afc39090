//! Bundle receives: one CQE covers several buffers in ring order, starting at the bid in the
//! CQE. The pool's copy of the ring order (which bid sits at which position) turns it into its
//! chunks: the first from that buffer's cursor, the rest from where their entries start,
//! F_BUF_MORE applying to the last. Checked in full before any chunk is formed.

use std::io;
use std::sync::Arc;

use crate::chunk::{Chunk, Shared};
use crate::completion::{Completion, CqeFlags};
use crate::error::{BadCompletion, Result};
use crate::pool::{Piece, Pool};

/// The most buffers one bundle completion may cover. The kernel maps at most 256 buffers per
/// pass, but after a full pass with more data waiting it makes one more and appends it to the
/// same completion: on 6.18 a single bundle recv returned 260 buffers. Two passes bound it.
pub const MAX_BUNDLE: usize = 512;

/// The chunks of one bundle completion, in order: an iterator that forms each [`Chunk`] as it
/// is taken. It lives on the stack (no allocation); chunks not taken are released when it is
/// dropped.
pub struct Bundle {
    shared: Arc<Shared>,
    pieces: [Piece; MAX_BUNDLE],
    /// Whether the final buffer stays with the kernel (its chunk is not the last).
    keep_final: bool,
    n: u16,
    next: u16,
    total: u32,
}

impl Bundle {
    /// Total bytes of the bundle (the CQE's result).
    pub fn total_len(&self) -> usize {
        self.total as usize
    }

    /// Buffers the bundle covers.
    pub fn buffers(&self) -> usize {
        self.n as usize
    }

    /// (bid, offset, len) of chunk `i`, without taking it.
    pub fn piece(&self, i: usize) -> Option<(u16, u32, u32)> {
        (i < self.n as usize).then(|| {
            let p = self.pieces[i];
            (p.bid, p.offset, p.len)
        })
    }
}

impl Iterator for Bundle {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        if self.next >= self.n {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let p = self.pieces[i as usize];
        let last = !(i + 1 == self.n && self.keep_final);
        // The reference this chunk gives back was taken when the bundle was accepted.
        Some(Chunk::new(&self.shared, p.bid, p.offset, p.len, last))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.n - self.next) as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Bundle {}

impl Drop for Bundle {
    fn drop(&mut self) {
        while self.next < self.n {
            // SAFETY: the `Arc`'s pointer; the bundle gives up the piece's reference and its
            // own `Arc` keeps the `Shared` alive.
            unsafe {
                Shared::release(
                    Arc::as_ptr(&self.shared),
                    self.pieces[self.next as usize].bid,
                )
            };
            self.next += 1;
        }
    }
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.pieces[self.next as usize..self.n as usize].iter())
            .finish()
    }
}

/// A bundle receive completion, turned into something safe to use.
// The bundle (4 KiB) stays inline: boxing it would allocate per completion.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum BundleCompletion {
    /// Bytes arrived, in one or more buffers.
    Data {
        /// The chunks, in order.
        chunks: Bundle,
        /// Whether the multishot request goes on. `false` with data is normal for bundles: the
        /// kernel ends a multishot bundle receive that used the last posted buffer, even though
        /// data came. Publish and submit it again ([`must_rearm`](Self::must_rearm) says so).
        more: bool,
    },
    /// The peer closed its side (result 0). The request ended.
    EndOfStream,
    /// The ring ran dry (`-ENOBUFS`): the request ended and no data was lost. Give buffers
    /// back, [`Pool::publish`], then submit the receive again.
    NoBuffers,
    /// The request failed with this error; it ended.
    Failed(io::Error),
}

impl BundleCompletion {
    /// Whether the request ended while the stream goes on, so it must be submitted again
    /// (after [`Pool::publish`]): data without F_MORE, or [`NoBuffers`](Self::NoBuffers).
    pub fn must_rearm(&self) -> bool {
        matches!(
            self,
            BundleCompletion::Data { more: false, .. } | BundleCompletion::NoBuffers
        )
    }
}

impl From<Completion> for BundleCompletion {
    fn from(c: Completion) -> Self {
        match c {
            Completion::Data { chunk, more } => {
                let shared = chunk.shared_arc();
                let mut pieces = [Piece::default(); MAX_BUNDLE];
                pieces[0] = Piece {
                    bid: chunk.bid(),
                    offset: chunk.offset(),
                    len: chunk.len() as u32,
                    consumed: chunk.len() as u32,
                };
                let keep_final = !chunk.is_last();
                let total = chunk.len() as u32;
                // The bundle takes over the chunk's reference.
                std::mem::forget(chunk);
                BundleCompletion::Data {
                    chunks: Bundle {
                        shared,
                        pieces,
                        keep_final,
                        n: 1,
                        next: 0,
                        total,
                    },
                    more,
                }
            }
            Completion::EndOfStream => BundleCompletion::EndOfStream,
            Completion::NoBuffers => BundleCompletion::NoBuffers,
            Completion::Failed(e) => BundleCompletion::Failed(e),
        }
    }
}

impl Pool {
    /// Checks the CQE of a bundle receive ([`recv_bundle`](Self::recv_bundle),
    /// [`recv_multishot_bundle`](Self::recv_multishot_bundle)) and turns it into its chunks.
    ///
    /// The CQE names the first buffer and the total; the bytes fill that buffer from its
    /// cursor, then the next ring entries in ring order, each from where its entry starts;
    /// F_BUF_MORE applies to the last. Every buffer is checked (held by the kernel, at the
    /// ring position the pool wrote it to, at most [`MAX_BUNDLE`] of them, total within their space)
    /// before any chunk is formed; a CQE that fails is rejected with
    /// [`Error::BadCompletion`](crate::Error::BadCompletion) and changes nothing.
    ///
    /// A CQE of a plain receive is a bundle of one buffer, so this accepts those too. On legacy
    /// pools every CQE must fit one buffer (their bundle builders make plain receives).
    pub fn complete_bundle(&mut self, result: i32, flags: u32) -> Result<BundleCompletion> {
        let f = CqeFlags(flags);
        let Some(bid) = f.buffer() else {
            return self.no_buffer(result);
        };
        if result <= 0 {
            // A zero or failed result with a buffer: one buffer, nothing to split.
            return self.complete(result, flags).map(Into::into);
        }
        let first = self.check_bid(bid, f)?;
        if self.backend() == crate::Backend::Legacy {
            // Legacy pools never send bundles (see `recv_bundle`): one buffer per CQE.
            return self.complete(result, flags).map(Into::into);
        }
        let (ring_tail, mask) = self.order();
        let buf_len = self.shared.buf_len;
        let mut pieces = [Piece::default(); MAX_BUNDLE];
        let mut rem = result as u32;
        let pos0 = self.slot_pos[first];
        // Published entries from the first buffer's position on.
        let posted = ring_tail.wrapping_sub(pos0) as usize;
        let mut space_seen: u64 = 0;
        let mut n = 0usize;
        let mut b = bid;
        loop {
            let i = b as usize;
            let offset = self.cursor[i];
            let space = buf_len - offset;
            let take = rem.min(space);
            pieces[n] = Piece {
                bid: b,
                offset,
                len: take,
                consumed: take,
            };
            space_seen += u64::from(space);
            rem -= take;
            n += 1;
            if rem == 0 {
                if f.buf_more() && take == space {
                    return self.reject(BadCompletion::BufMoreWithoutSpace { bid: b });
                }
                break;
            }
            if n == MAX_BUNDLE || n >= posted {
                return self.reject(BadCompletion::BundleTooLarge {
                    bid,
                    res: result,
                    space: space_seen,
                });
            }
            let pos = pos0.wrapping_add(n as u16);
            b = self.slots[(pos & mask) as usize];
            if !self.in_kernel[b as usize] || self.slot_pos[b as usize] != pos {
                return self.reject(BadCompletion::BundleOutOfOrder {
                    bid,
                    index: n as u16,
                    found: b,
                });
            }
        }
        // Accepted: settle every buffer. Retired buffers hand the kernel's reference to their
        // chunk; a final buffer the kernel keeps gives its chunk a reference of its own.
        self.stats.completions += 1;
        self.stats.bundles += 1;
        self.stats.bytes_delivered += result as u64;
        let mut keep_final = false;
        for (k, p) in pieces[..n].iter().enumerate() {
            let final_piece = k + 1 == n;
            let retired = self.settle(*p, final_piece, f.buf_more());
            if !retired {
                debug_assert!(final_piece);
                keep_final = true;
                self.shared.acquire(p.bid);
            }
        }
        Ok(BundleCompletion::Data {
            chunks: Bundle {
                shared: Arc::clone(&self.shared),
                pieces,
                keep_final,
                n: n as u16,
                next: 0,
                total: result as u32,
            },
            more: f.more(),
        })
    }

    /// [`complete_bundle`](Self::complete_bundle) for an `io_uring::cqueue::Entry`.
    pub fn complete_bundle_cqe(
        &mut self,
        cqe: &io_uring::cqueue::Entry,
    ) -> Result<BundleCompletion> {
        self.complete_bundle(cqe.result(), cqe.flags())
    }
}
