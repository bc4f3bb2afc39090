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
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod chunk;
mod completion;
mod error;
mod mem;
#[cfg(feature = "model")]
pub mod model;
mod ops;
mod pool;
mod probe;
mod ring;
pub mod sys;

pub use chunk::Chunk;
pub use completion::{Completion, CqeFlags};
pub use error::{BadCompletion, Error, Feature, Result};
pub use mem::HugePages;
pub use ops::Target;
pub use pool::{Incremental, Pool, PoolBuilder, PoolStats};
pub use probe::{kernel_release, Probe};
pub use ring::{BufRing, BufRingBuilder, MAX_MMAP_BGID};
