//! What a completion means for the user: data (one chunk, or several for a bundle), end of
//! stream, "the ring ran dry", or an error; and [`Cqe`], the two numbers a CQE carries.

use std::io;

use io_uring::cqueue;

use crate::chunk::Chunks;

/// The result and flags of a CQE: what [`Pool::complete`](crate::Pool::complete) reads.
///
/// Made from an `io_uring::cqueue::Entry` (`Cqe::from(&cqe)`), or from raw numbers by code
/// that reaps completions some other way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cqe {
    /// `cqe->res`: bytes received, or a negated errno.
    pub result: i32,
    /// `cqe->flags`.
    pub flags: u32,
}

impl Cqe {
    /// A CQE with this result and these flags.
    pub const fn new(result: i32, flags: u32) -> Self {
        Cqe { result, flags }
    }

    /// The selected buffer's id, if the kernel picked one (F_BUFFER).
    #[inline]
    pub fn bid(self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// The multishot request goes on (F_MORE).
    #[inline]
    pub fn more(self) -> bool {
        cqueue::more(self.flags)
    }

    /// The kernel keeps filling the same buffer (F_BUF_MORE, incremental rings).
    #[inline]
    pub fn buf_more(self) -> bool {
        cqueue::buffer_more(self.flags)
    }

    /// The socket still had data when the request completed (F_SOCK_NONEMPTY).
    pub fn sock_nonempty(self) -> bool {
        cqueue::sock_nonempty(self.flags)
    }
}

#[cfg(feature = "model")]
impl Cqe {
    /// What the differential tests compare: result, bid (if F_BUFFER), F_MORE, F_BUF_MORE.
    /// F_SOCK_NONEMPTY depends on timing and is left out.
    pub fn key(self) -> (i32, Option<u16>, bool, bool) {
        (self.result, self.bid(), self.more(), self.buf_more())
    }
}

impl std::fmt::Display for Cqe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "res {}", self.result)?;
        if let Some(bid) = self.bid() {
            write!(f, " bid {bid}")?;
        }
        if self.more() {
            f.write_str(" MORE")?;
        }
        if self.buf_more() {
            f.write_str(" BUF_MORE")?;
        }
        Ok(())
    }
}

impl From<&Cqe> for Cqe {
    #[inline]
    fn from(cqe: &Cqe) -> Self {
        *cqe
    }
}

impl From<&cqueue::Entry> for Cqe {
    #[inline]
    fn from(cqe: &cqueue::Entry) -> Self {
        Cqe::new(cqe.result(), cqe.flags())
    }
}

impl From<cqueue::Entry> for Cqe {
    #[inline]
    fn from(cqe: cqueue::Entry) -> Self {
        Cqe::from(&cqe)
    }
}

/// A receive completion, turned into something safe to use. Plain and bundle receives give
/// the same type: `Data` carries one chunk per buffer the completion filled.
#[derive(Debug)]
#[must_use = "a completion carries data, or says the request ended"]
pub enum Completion {
    /// Bytes arrived.
    Data {
        /// The bytes, in order: one chunk for a plain receive, one per buffer for a bundle.
        chunks: Chunks,
        /// Whether the multishot request goes on. `false` means it ended (a single-shot request
        /// always ends; a multishot ends on CQ overflow, and a multishot bundle ends when it
        /// used the last posted buffer, even though data came): submit it again to keep
        /// receiving.
        more: bool,
    },
    /// The peer closed its side (result 0), or a read reached end of file. The request ended.
    EndOfStream,
    /// The ring ran dry (`-ENOBUFS`): the request ended, and no data was lost: it waits in the
    /// socket. Give buffers back (drop chunks, then [`Pool::publish`](crate::Pool::publish)),
    /// then submit the receive again.
    NoBuffers,
    /// The request failed with this error; it ended.
    Failed(io::Error),
}

impl Completion {
    /// Whether the request that produced this completion is still active (only `Data` with
    /// `more`). When `false`, submit it again if you want more.
    pub fn more(&self) -> bool {
        matches!(self, Completion::Data { more: true, .. })
    }

    /// Whether the request ended while the stream goes on, so it must be submitted again
    /// (after [`Pool::publish`](crate::Pool::publish)): data without F_MORE, or
    /// [`NoBuffers`](Self::NoBuffers). (A single-shot request always ends with its data.)
    pub fn must_rearm(&self) -> bool {
        matches!(
            self,
            Completion::Data { more: false, .. } | Completion::NoBuffers
        )
    }

    /// The chunks, if data arrived.
    pub fn into_chunks(self) -> Option<Chunks> {
        match self {
            Completion::Data { chunks, .. } => Some(chunks),
            _ => None,
        }
    }
}
