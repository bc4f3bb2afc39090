//! What a completion means for the user: data, end of stream, "the ring ran dry", or an
//! error. The decoding of raw CQE flags lives here too, so the pool's checks read plainly.

use std::io;

use crate::chunk::Chunk;
use crate::sys;

/// The flags of a CQE, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqeFlags(pub u32);

impl CqeFlags {
    /// The selected buffer's id, if the kernel picked one (F_BUFFER).
    pub fn buffer(self) -> Option<u16> {
        (self.0 & sys::IORING_CQE_F_BUFFER != 0)
            .then_some((self.0 >> sys::IORING_CQE_BUFFER_SHIFT) as u16)
    }

    /// The multishot request goes on (F_MORE).
    pub fn more(self) -> bool {
        self.0 & sys::IORING_CQE_F_MORE != 0
    }

    /// The kernel keeps filling the same buffer (F_BUF_MORE, incremental rings).
    pub fn buf_more(self) -> bool {
        self.0 & sys::IORING_CQE_F_BUF_MORE != 0
    }

    /// The socket still had data when the request completed (F_SOCK_NONEMPTY).
    pub fn sock_nonempty(self) -> bool {
        self.0 & sys::IORING_CQE_F_SOCK_NONEMPTY != 0
    }
}

/// A receive completion, turned into something safe to use.
#[derive(Debug)]
pub enum Completion {
    /// Bytes arrived.
    Data {
        /// The bytes, in a pool buffer.
        chunk: Chunk,
        /// Whether the multishot request goes on. `false` means it ended (a single-shot
        /// request always ends; a multishot ends on CQ overflow, among others): submit it again
        /// to keep receiving.
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

    /// The chunk, if data arrived.
    pub fn into_chunk(self) -> Option<Chunk> {
        match self {
            Completion::Data { chunk, .. } => Some(chunk),
            _ => None,
        }
    }
}
