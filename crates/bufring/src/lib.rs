//! io_uring provided buffer rings for Rust: the kernel picks a receive buffer only when data
//! arrives, fills it a piece at a time on incremental rings, and bufring turns each completion
//! into a safe [`Chunk`] that gives its buffer back when dropped.
//!
//! bufring sits on top of the [`io_uring`] crate: you keep your `IoUring`, push the SQEs a
//! [`Pool`] builds, and hand it the CQEs you reap.
//!
//! ```no_run
//! use bufring::{Completion, Incremental, Pool};
//! use io_uring::IoUring;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (sock, _peer) = std::os::unix::net::UnixStream::pair()?;
//! # use std::os::fd::AsRawFd;
//! let mut ring = IoUring::new(64)?;
//! let mut pool = Pool::builder(0)
//!     .count(16)
//!     .buf_len(256 * 1024)
//!     .incremental(Incremental::Kernel)
//!     .build(&ring)?;
//! let recv = pool.recv_multishot(sock.as_raw_fd());
//! // SAFETY: the pool outlives the request (it is dropped after the loop ends).
//! unsafe { ring.submission().push(&recv)? };
//! loop {
//!     ring.submit_and_wait(1)?;
//!     let cqes: Vec<_> = ring.completion().collect();
//!     for cqe in cqes {
//!         match pool.complete_cqe(&cqe)? {
//!             Completion::Data { chunk, .. } => println!("{} bytes at offset {}", chunk.len(), chunk.offset()),
//!             Completion::EndOfStream => return Ok(()),
//!             Completion::NoBuffers => { /* drop chunks, publish, submit recv again */ }
//!             Completion::Failed(e) => return Err(e.into()),
//!         }
//!     }
//!     pool.publish(); // one tail store for the whole batch
//! }
//! # }
//! ```
//!
//! # Receive paths
//! - **Bundles** ([`Pool::recv_bundle`], [`Pool::recv_multishot_bundle`]): one CQE covers
//!   several buffers; [`Pool::complete_bundle`] splits it into a [`Bundle`] of chunks using the
//!   pool's own copy of the ring order, after checking every buffer.
//! - **Pipes and files**: [`Pool::read_multishot`] for pipes; [`Pool::read`] with an explicit
//!   length and [`Pool::complete_file_read`] for regular files, where incremental rings use
//!   the selected length, not the bytes read.
//! - **Every kernel with provided buffers**: [`Incremental::Emulated`] (or `Auto`) consumes
//!   buffers a piece at a time without kernel support, and [`Backend::Legacy`] (chosen by
//!   `Auto` on kernels without rings) gives buffers to the kernel through SQEs from
//!   [`Pool::provide`].
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod bundle;
mod chunk;
mod completion;
mod error;
mod frame;
mod legacy;
mod mem;
#[cfg(feature = "model")]
pub mod model;
mod ops;
mod pool;
mod probe;
mod recvmsg;
mod ring;
mod stream;
pub mod sys;

pub use bundle::{Bundle, BundleCompletion, MAX_BUNDLE};
pub use chunk::Chunk;
pub use completion::{Completion, CqeFlags};
pub use error::{BadCompletion, Error, Feature, Result};
pub use frame::{Delimited, Frame, FrameError, Framing, LengthPrefixed, PrefixWidth};
pub use mem::HugePages;
pub use ops::Target;
pub use pool::{Backend, Incremental, Pool, PoolBuilder, PoolStats};
pub use probe::{kernel_release, Probe};
pub use recvmsg::{BadDatagram, ControlMessage, ControlMessages, Datagram, RecvMsg};
pub use ring::{BufRing, BufRingBuilder, MAX_MMAP_BGID};
pub use stream::RecvStream;

/// The README's examples run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
