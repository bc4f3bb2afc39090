//! `bufring demo`: the worked example from the Linux commit that introduced incremental
//! consumption, replayed on the live kernel. Two 32 KiB buffers, a TCP loopback pair, one
//! multishot recv; the peer sends 4096, 8192, 20480 and 4096 bytes, each after the previous
//! bytes were received.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bufring::{Completion, Incremental, Pool};
use io_uring::{types, IoUring};

/// Options of `bufring demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object per completion.
    #[arg(long)]
    json: bool,
    /// Use a classic ring (each completion takes a whole buffer) for contrast.
    #[arg(long)]
    no_incremental: bool,
}

const SENDS: [usize; 4] = [4096, 8192, 20480, 4096];
const BUF_LEN: usize = 32 * 1024;

pub fn run(args: Args) -> crate::CliResult {
    let mode = if args.no_incremental {
        Incremental::Off
    } else {
        Incremental::Kernel
    };
    let mut ring = IoUring::new(16)?;
    let mut pool = Pool::builder(0)
        .count(2)
        .buf_len(BUF_LEN)
        .incremental(mode)
        .build(&ring)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut tx = TcpStream::connect(listener.local_addr()?)?;
    let (rx, _) = listener.accept()?;
    tx.set_nodelay(true)?;
    let say = |s: String| {
        if !args.json {
            println!("{s}");
        }
    };
    say(format!(
        "{} ring, bgid 0: 2 buffers of {} bytes (bid 0 and 1); one multishot recv on a TCP loopback pair",
        if args.no_incremental { "classic" } else { "incremental" },
        BUF_LEN
    ));
    // SAFETY: the request ends (end of stream, waited for below) before the pool is dropped.
    unsafe { ring.submission().push(&pool.recv_multishot(rx.as_raw_fd()))? };
    ring.submit()?;
    for size in SENDS {
        say(format!("\npeer sends {size} bytes"));
        tx.write_all(&vec![0xab; size])?;
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while got < size {
            if Instant::now() > deadline {
                return Err("timed out waiting for a completion".into());
            }
            let ts = types::Timespec::new().nsec(50_000_000);
            let wait = types::SubmitArgs::new().timespec(&ts);
            let _ = ring.submitter().submit_with_args(1, &wait);
            let cqes: Vec<_> = ring.completion().map(|c| (c.result(), c.flags())).collect();
            for (res, flags) in cqes {
                match pool.complete(res, flags)? {
                    Completion::Data { chunk, more } => {
                        got += chunk.len();
                        let buf_more = !chunk.is_last();
                        if args.json {
                            println!(
                                "{}",
                                serde_json::json!({
                                    "res": chunk.len(), "bid": chunk.bid(),
                                    "offset": chunk.offset(), "buf_more": buf_more
                                })
                            );
                        } else {
                            println!(
                                "  completion: {} bytes in bid {} at offset {} (address {:p}), F_BUF_MORE {}",
                                chunk.len(), chunk.bid(), chunk.offset(), chunk.as_ptr(),
                                if buf_more { "set: the kernel keeps filling this buffer" }
                                else { "clear: the kernel is done with this buffer" }
                            );
                            if !more {
                                println!("  the multishot ended");
                            }
                        }
                        // The chunk is dropped here: the buffer goes back only once the kernel
                        // has also retired it.
                    }
                    Completion::NoBuffers => return Err("the ring ran dry".into()),
                    Completion::EndOfStream => return Err("unexpected end of stream".into()),
                    Completion::Failed(e) => return Err(e.into()),
                }
            }
            let before = pool.stats().reposted;
            pool.publish();
            let back = pool.stats().reposted - before;
            if back > 0 {
                say(format!(
                    "  {back} buffer(s) retired and released: posted back to the ring with their original address and full length"
                ));
            }
        }
    }
    let s = pool.stats();
    say(format!(
        "\n{} bytes in {} completions; {} buffer(s) retired; utilization {:.2}",
        s.bytes_delivered,
        s.completions,
        s.buffers_retired,
        s.utilization()
    ));
    // End the multishot before the pool goes: close the peer and wait for end of stream.
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(5);
    'wait: while Instant::now() < deadline {
        ring.submit_and_wait(1)?;
        let cqes: Vec<_> = ring.completion().map(|c| (c.result(), c.flags())).collect();
        for (res, flags) in cqes {
            if !matches!(pool.complete(res, flags)?, Completion::Data { more: true, .. }) {
                break 'wait;
            }
        }
    }
    Ok(())
}
