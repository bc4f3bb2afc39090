//! Reading a regular file into an incremental pool: each read takes the next piece of the
//! current buffer, and the chunks are views of the file's bytes.
//!
//! `cargo run -p bufring --example file_read [-- FILE]` reads FILE (by default a 1 MiB file it
//! writes to the temp directory and removes), 12 KiB per read, and checks the bytes against
//! `std::fs::read`.

use std::os::fd::AsRawFd;

use bufring::{Completion, Incremental, Pool};
use io_uring::IoUring;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const READ: u32 = 12 * 1024;
const READ_UD: u64 = 1;
const PROVIDE: u64 = 2;

fn main() -> Result<()> {
    let Ok(mut ring) = IoUring::new(8) else {
        eprintln!("io_uring is unavailable here: nothing to show");
        return Ok(());
    };
    let (path, temp) = match std::env::args().nth(1) {
        Some(p) => (std::path::PathBuf::from(p), false),
        None => {
            let p = std::env::temp_dir().join(format!("bufring-file-read-{}", std::process::id()));
            let data: Vec<u8> = (0..1 << 20).map(|k: u32| (k * 7 + k / 251) as u8).collect();
            std::fs::write(&p, data)?;
            (p, true)
        }
    };
    let file = std::fs::File::open(&path)?;
    // Four 64 KiB buffers, each filled 12 KiB at a time on kernels with incremental rings
    // (emulated elsewhere). One read in flight at a time: the kernel uses up the length asked
    // for, and the pool follows that because `read` told it the file is a regular file.
    let mut pool = Pool::builder(0)
        .count(4)
        .buf_len(64 * 1024)
        .incremental(Incremental::Auto)
        .build(&ring)?;
    let mut out = Vec::new();
    let mut chunks = 0;
    loop {
        // A pool on legacy provided buffers (kernels before 5.19) hands its buffers to the
        // kernel through SQEs, submitted ahead of the read; on a buffer ring there are none.
        let provided = pool.provide(|sqe| {
            // SAFETY: the SQE gives the kernel buffers of `pool`, which outlives the loop.
            unsafe { ring.submission().push(&sqe.user_data(PROVIDE)) }.is_ok()
        });
        let e = pool
            .read(file.as_raw_fd(), READ, out.len() as u64)
            .user_data(READ_UD);
        // SAFETY: the pool outlives the read: it is dropped after its completion.
        unsafe { ring.submission().push(&e)? };
        ring.submit_and_wait(1 + provided as usize)?;
        let cqes: Vec<_> = ring.completion().collect();
        for p in cqes.iter().filter(|c| c.user_data() == PROVIDE) {
            if p.result() < 0 {
                return Err(std::io::Error::from_raw_os_error(-p.result()).into());
            }
        }
        let cqe = cqes
            .into_iter()
            .find(|c| c.user_data() == READ_UD)
            .ok_or("no completion")?;
        // SAFETY: the read above is the ring's only read; its CQE is handed over once.
        match unsafe { pool.complete(&cqe)? } {
            Completion::Data { chunks: data, .. } => {
                for chunk in data {
                    out.extend_from_slice(&chunk);
                    chunks += 1;
                }
            }
            Completion::EndOfStream => break,
            Completion::NoBuffers => return Err("four buffers ran dry with one read".into()),
            Completion::Failed(e) => return Err(e.into()),
        }
        pool.publish();
    }
    let want = std::fs::read(&path)?;
    if temp {
        std::fs::remove_file(&path)?;
    }
    if out != want {
        return Err("the bytes read differ from the file".into());
    }
    let s = pool.stats();
    println!(
        "{} bytes in {chunks} reads, {} buffers retired, incremental: {:?}",
        out.len(),
        s.buffers_retired,
        pool.incremental()
    );
    Ok(())
}
