//! Completing a CQE: check it against the ledger, apply it to each buffer it covers, form its
//! chunks. One path serves plain receives, reads, and bundles (one CQE over several buffers in
//! ring order from the bid in the CQE: the first from its cursor, the others from where their
//! entries start, F_BUF_MORE applying to the last). A CQE is checked in full before anything
//! changes; a CQE that fails a check is rejected and changes nothing.

use std::io;
use std::sync::atomic::Ordering;

use super::{Feed, Incremental, Pool};
use crate::chunk::{Chunk, Chunks, Piece, Shared};
use crate::completion::{Completion, Cqe};
use crate::error::{BadCompletion, Error, Result};

impl Pool {
    /// Checks a CQE of a request that selected from this pool and turns it into a
    /// [`Completion`]: data (one chunk; for a bundle receive, one chunk per buffer), end of
    /// stream, [`NoBuffers`](Completion::NoBuffers), or the request's error.
    ///
    /// A CQE that cannot be right (bid out of range or not held by the kernel, more bytes than
    /// the buffers it may cover have left, a bundle that does not follow the ring order the
    /// pool wrote, F_BUF_MORE on a pool without kernel incremental consumption, data without a
    /// buffer) is rejected with [`Error::BadCompletion`] and changes nothing.
    ///
    /// How a CQE is read follows from what the pool's SQE builders made: a completion may span
    /// several buffers once the pool made a bundle receive (or was built with
    /// [`bundles`](crate::PoolBuilder::bundles)); on a kernel incremental pool that made a
    /// [`read`](Self::read) of a regular file, completions are such reads (they use up the
    /// length asked for, not the bytes read).
    ///
    /// # Safety
    /// `cqe` was posted by the kernel, on the io_uring this pool is registered on, for a
    /// request that selects from this pool, and it is handed to the pool once. A CQE that is
    /// made up, duplicated, or meant for another pool can name a buffer the pool has posted
    /// again: accepting it would hand out a chunk over memory the kernel is about to write
    /// into. The checks catch every CQE that cannot be right, but such a CQE can look right.
    #[inline]
    pub unsafe fn complete(&mut self, cqe: impl Into<Cqe>) -> Result<Completion> {
        let cqe = cqe.into();
        let Some(bid) = cqe.bid() else {
            return self.no_buffer(cqe.result);
        };
        if let Err(why) = self.check(bid, cqe) {
            return self.reject(why);
        }
        let offset = self.ledger.cursor(bid);
        let space = self.shared.buf_len - offset;
        let len = cqe.result.max(0) as u32;
        let consumed = match self.consumed(len, space) {
            Ok(c) => c,
            Err(why) => return self.reject(why),
        };
        if len > space || len > consumed {
            if len > space && consumed == len && self.spans_buffers() {
                return self.complete_bundle(bid, cqe);
            }
            return self.reject(BadCompletion::TooLong {
                bid,
                res: cqe.result,
                space: consumed.min(space),
            });
        }
        if cqe.buf_more() && consumed == space {
            return self.reject(BadCompletion::BufMoreWithoutSpace { bid });
        }
        // Accepted: from here on the CQE is the truth about buffer `bid`.
        self.stats.completions += 1;
        self.stats.bytes_delivered += u64::from(len);
        let retired = self.settle(bid, offset, len, consumed, true, cqe.buf_more());
        if len == 0 {
            // Nothing to hand out: a retired buffer loses the kernel's reference and goes back
            // at the next publish.
            if retired {
                self.drop_kernel_ref(bid, false);
            }
            return Ok(match cqe.result {
                0 => Completion::EndOfStream,
                r => Completion::Failed(io::Error::from_raw_os_error(r.wrapping_neg())),
            });
        }
        if retired {
            // The chunk inherits the kernel's reference.
            self.drop_kernel_ref(bid, true);
        } else {
            // The kernel keeps the buffer; the chunk is counted by the ledger.
            self.hand_out(bid);
        }
        // SAFETY: the checks above put `offset..offset + len` inside buffer `bid`; the kernel
        // committed it in this CQE (handed over once, the caller's promise) and writes only
        // past `offset + consumed` until the buffer is posted again, which waits for the
        // chunk's reference (the kernel's on retirement, or one the ledger counts under the
        // buffer's bias while the kernel keeps it).
        let chunk = unsafe { Chunk::new(Shared::ptr(&self.shared), bid, offset, len, retired) };
        Ok(Completion::Data {
            chunks: Chunks::one(chunk),
            more: cqe.more(),
        })
    }

    /// A bundle: `cqe` fills buffer `bid` from its cursor to its end, then the next entries in
    /// ring order, each from where its entry starts.
    fn complete_bundle(&mut self, bid: u16, cqe: Cqe) -> Result<Completion> {
        let total = cqe.result as u32;
        let buf_len = self.shared.buf_len;
        let pos0 = self.ledger.pos(bid);
        // Published entries from the first buffer's position on: a bundle covers no more.
        let posted = self.feed.tail().wrapping_sub(pos0) as usize;
        let mut pieces = Vec::new();
        let mut rem = total;
        let mut space_seen: u64 = 0;
        let mut n = 0usize;
        let mut b = bid;
        loop {
            let offset = self.ledger.cursor(b);
            pieces.push(Piece { bid: b, offset });
            let space = buf_len - offset;
            let take = rem.min(space);
            space_seen += u64::from(space);
            rem -= take;
            n += 1;
            if rem == 0 {
                if cqe.buf_more() && take == space {
                    return self.reject(BadCompletion::BufMoreWithoutSpace { bid: b });
                }
                break;
            }
            if n >= posted {
                return self.reject(BadCompletion::BundleTooLarge {
                    bid,
                    res: cqe.result,
                    space: space_seen,
                });
            }
            let pos = pos0.wrapping_add(n as u16);
            b = self.ledger.at(pos);
            if !self.ledger.in_kernel(b) || self.ledger.pos(b) != pos {
                return self.reject(BadCompletion::BundleOutOfOrder {
                    bid,
                    index: n as u16,
                    found: b,
                });
            }
        }
        // Accepted: settle every buffer. Retired buffers hand the kernel's reference to their
        // chunk; a final buffer the kernel keeps hands out one more chunk.
        self.stats.completions += 1;
        self.stats.bundles += 1;
        self.stats.bytes_delivered += u64::from(total);
        let mut rem = total;
        let mut keep_final = false;
        for (k, p) in pieces.iter().enumerate() {
            let len = rem.min(buf_len - p.offset);
            rem -= len;
            let final_piece = k + 1 == n;
            if self.settle(p.bid, p.offset, len, len, final_piece, cqe.buf_more()) {
                self.drop_kernel_ref(p.bid, true);
            } else {
                debug_assert!(
                    final_piece,
                    "only the last buffer of a bundle stays current"
                );
                keep_final = true;
                self.hand_out(p.bid);
            }
        }
        // SAFETY: every piece was checked to be the buffer the pool posted at its ring position
        // and held by the kernel; the bytes fill each from its cursor to its end and the last up
        // to `total`, as `Chunks` lays them out; each piece holds one reference (the kernel's,
        // inherited on retirement, or the bias of a buffer the kernel keeps).
        let chunks = unsafe {
            let p = pieces[0];
            // The first piece is the whole rest of its buffer: a bundle spans buffers.
            let first = Chunk::new(
                Shared::ptr(&self.shared),
                p.bid,
                p.offset,
                buf_len - p.offset,
                true,
            );
            Chunks::bundle(
                first,
                Shared::ptr(&self.shared),
                pieces[1..].into(),
                total,
                buf_len,
                keep_final,
            )
        };
        Ok(Completion::Data {
            chunks,
            more: cqe.more(),
        })
    }

    /// Checks that `bid` is ours and held by the kernel, and that F_BUF_MORE fits the mode.
    #[inline]
    fn check(&self, bid: u16, cqe: Cqe) -> Result<(), BadCompletion> {
        self.ledger.check(bid, self.feed.tail())?;
        if cqe.buf_more() && self.mode != Incremental::Kernel {
            return Err(BadCompletion::BufMoreOnClassicPool { bid });
        }
        Ok(())
    }

    /// What the kernel consumed from the entry for `len` bytes with `space` left: the bytes,
    /// or, for reads of regular files into kernel incremental rings, the length the read asked
    /// for (such reads commit it when they select the buffer).
    #[inline]
    fn consumed(&self, len: u32, space: u32) -> Result<u32, BadCompletion> {
        if self.mode != Incremental::Kernel {
            return Ok(len);
        }
        let asked = self.built.file_read_len.load(Ordering::Relaxed);
        if asked == 0 {
            return Ok(len);
        }
        if self.built.streams.load(Ordering::Relaxed) {
            // Which kind of request this CQE came from cannot be told: guessing wrong one way
            // would let the kernel write under a chunk.
            return Err(BadCompletion::MixedFileReads);
        }
        Ok(asked.min(space))
    }

    /// Whether a completion may span several buffers: a ring pool that made bundle receives.
    #[inline]
    fn spans_buffers(&self) -> bool {
        matches!(self.feed, Feed::Ring(_)) && self.built.bundles.load(Ordering::Relaxed)
    }

    /// Applies an accepted completion to one buffer: `len` bytes at `offset`, `consumed` of
    /// its entry. Moves the cursor, updates the shadow head, posts the rest (emulation) or
    /// retires the buffer. `final_piece` says whether this is the last buffer the completion
    /// touched (F_BUF_MORE applies to it alone). Returns whether the buffer was retired (its
    /// chunk is the last one).
    #[inline]
    fn settle(
        &mut self,
        bid: u16,
        offset: u32,
        len: u32,
        consumed: u32,
        final_piece: bool,
        buf_more: bool,
    ) -> bool {
        let end = offset + consumed;
        // Whether the kernel moved its head past this buffer's entry.
        let entry_done = !(final_piece && self.mode == Incremental::Kernel && buf_more);
        let keep = match self.mode {
            Incremental::Kernel => !entry_done,
            Incremental::Emulated => self.shared.buf_len - end >= self.min_left,
            _ => false,
        };
        self.ledger.consumed(bid, entry_done);
        if keep {
            if self.mode == Incremental::Emulated {
                self.post_entry(bid, end);
                self.stats.emulated_reposts += 1;
            } else {
                self.ledger.advance(bid, end);
            }
            return false;
        }
        self.ledger.retire(bid);
        self.stats.buffers_retired += 1;
        // Buffers with the application (derived, see `Pool::stats`).
        let with_app = self.count() - self.posted() - self.parked.len() as u32;
        self.stats.peak_with_app = self.stats.peak_with_app.max(with_app);
        self.stats.bytes_used_retired += u64::from(offset + len);
        true
    }

    /// A completion without a buffer.
    fn no_buffer(&mut self, result: i32) -> Result<Completion> {
        match result {
            0 => Ok(Completion::EndOfStream),
            r if r == -libc::ENOBUFS => {
                self.stats.enobufs += 1;
                Ok(Completion::NoBuffers)
            }
            r if r < 0 => Ok(Completion::Failed(io::Error::from_raw_os_error(
                r.wrapping_neg(),
            ))),
            r => self.reject(BadCompletion::DataWithoutBuffer { res: r }),
        }
    }

    fn reject<T>(&mut self, why: BadCompletion) -> Result<T> {
        self.stats.rejected += 1;
        Err(Error::BadCompletion(why))
    }
}
