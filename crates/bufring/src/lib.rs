//! io_uring provided buffer rings for Rust: the kernel picks a receive buffer only when data
//! arrives, fills it a piece at a time on incremental rings, and bufring turns each completion
//! into safe [`Chunk`]s that give their buffer back when dropped.
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
//!         // SAFETY: reaped from the ring the pool is registered on, for its receive, once.
//!         match unsafe { pool.complete(&cqe)? } {
//!             Completion::Data { chunks, .. } => {
//!                 for chunk in chunks {
//!                     println!("{} bytes at offset {}", chunk.len(), chunk.offset());
//!                 }
//!             }
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
//! # The life of a buffer
//! ```text
//!    free ──post──▶ posted ──kernel selects──▶ current (incremental: partly filled, F_BUF_MORE)
//!     ▲                                            │
//!     │                                kernel retires it (CQE without F_BUF_MORE)
//!     │                                            ▼
//!     └──── last chunk dropped ◀──────────── retired, chunks alive
//! ```
//! The kernel writes only into the part of a buffer no live chunk covers; a buffer goes back
//! into the ring (whole, at its original address) once the kernel retired it *and* its last
//! chunk is gone. Where each step is in the code: `pool/mod.rs` (post, publish: the one tail
//! store), `pool/complete.rs` (check a CQE, move the cursor or retire the buffer, form the
//! chunks), `pool/ledger.rs` (the per-buffer state), `chunk.rs` (the lock-free return).
//!
//! # Where `unsafe` is, and why
//! Two hand-offs to the kernel are `unsafe`, as in the io-uring crate: pushing an SQE (the
//! kernel will write into the pool's buffers while the request is in flight, so the pool must
//! outlive it) and [`Pool::complete`] (a CQE is a claim that the kernel wrote a buffer; a
//! made-up, duplicated or misrouted CQE could name a buffer the kernel is about to write
//! again). Every CQE is still checked before any slice is formed. Everything else is safe.
//!
//! ```compile_fail
//! # fn f(pool: &mut bufring::Pool, cqe: &io_uring::cqueue::Entry) {
//! let _ = pool.complete(cqe); // error: call to unsafe function
//! # }
//! ```
//! ```compile_fail
//! # fn f(ring: &mut bufring::BufRing) {
//! ring.advance(1); // error: publishing ring entries is unsafe
//! # }
//! ```
//! ```compile_fail
//! use bufring::sys; // error: the raw uapi calls are private
//! ```
//!
//! # Receive paths
//! - **Bundles** ([`Pool::recv_bundle`], [`Pool::recv_multishot_bundle`]): one CQE covers
//!   several buffers; [`Completion::Data`] carries one chunk per buffer, split with the pool's
//!   own copy of the ring order after checking every buffer. No fixed maximum: the kernel
//!   makes bundles of more than 256 buffers.
//! - **Pipes and files**: [`Pool::read_multishot`] for pipes; [`Pool::read`] with an explicit
//!   length for regular files, where kernel incremental rings use up the length asked for,
//!   not the bytes read (the pool follows that by itself).
//! - **Every kernel with provided buffers**: [`Incremental::Emulated`] (or `Auto`) consumes
//!   buffers a piece at a time without kernel support, and [`Backend::Legacy`] (chosen by
//!   `Auto` on kernels without rings) gives buffers to the kernel through SQEs from
//!   [`Pool::provide`].
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod chunk;
mod completion;
pub mod driver;
mod error;
mod frame;
mod mem;
#[cfg(feature = "model")]
pub mod model;
mod pool;
mod probe;
mod recvmsg;
mod ring;
mod stream;
mod sys;

pub use chunk::{Chunk, Chunks};
pub use completion::{Completion, Cqe};
pub use error::{BadCompletion, Error, Feature, Result};
pub use frame::{Delimited, Frame, FrameError, Framing, LengthPrefixed, PrefixWidth};
pub use mem::HugePages;
pub use pool::{leaks, Backend, Incremental, Leaks, Pool, PoolBuilder, PoolStats, Target};
pub use probe::Probe;
pub use recvmsg::{BadDatagram, ControlMessage, ControlMessages, Datagram, RecvMsg};
pub use ring::{BufRing, BufRingBuilder, RingEntry, MAX_MMAP_BGID};
pub use stream::RecvStream;

/// The README's examples run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
