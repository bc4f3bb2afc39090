//! `bufring demo`: the worked example from the Linux commit that introduced incremental
//! consumption, replayed on the live kernel. A TCP loopback pair and one multishot recv; the
//! peer sends 4096, 8192, 20480 and 4096 bytes, each after the previous bytes were received.
//! `--mode` shows the same traffic through each way of consuming buffers.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bufring::{Completion, Cqe, Incremental, Pool};
use io_uring::{types, IoUring};

/// How the demo's pool consumes buffers.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Classic ring: each completion takes a whole buffer.
    Classic,
    /// Kernel incremental consumption (IOU_PBUF_RING_INC, 6.12).
    Incremental,
    /// Incremental consumption emulated by bufring on a classic ring.
    Emulated,
    /// Multishot bundle receive: one completion may span several (smaller) buffers.
    Bundle,
}

/// Options of `bufring demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object per completion (per chunk in bundle mode, with its "cqe" index).
    #[arg(long)]
    json: bool,
    /// Use a classic ring (each completion takes a whole buffer) for contrast; same as
    /// `--mode classic`.
    #[arg(long, conflicts_with = "mode")]
    no_incremental: bool,
    /// The way of consuming buffers to show.
    #[arg(long, value_enum, default_value = "incremental")]
    mode: Mode,
}

const SENDS: [usize; 4] = [4096, 8192, 20480, 4096];
const BUF_LEN: usize = 32 * 1024;
/// Bundle mode: the same memory as the others, cut in smaller buffers so bundles span them.
const BUNDLE_BUFS: usize = 8;
const BUNDLE_BUF_LEN: usize = 8 * 1024;

/// One chunk as the demo shows it.
struct Shown {
    len: usize,
    bid: u16,
    offset: u32,
    buf_more: bool,
    addr: *const u8,
}

pub fn run(args: Args) -> crate::CliResult {
    let mode = if args.no_incremental {
        Mode::Classic
    } else {
        args.mode
    };
    let (count, buf_len, incremental) = match mode {
        Mode::Classic => (2, BUF_LEN, Incremental::Off),
        Mode::Incremental => (2, BUF_LEN, Incremental::Kernel),
        Mode::Emulated => (2, BUF_LEN, Incremental::Emulated),
        Mode::Bundle => (BUNDLE_BUFS, BUNDLE_BUF_LEN, Incremental::Auto),
    };
    let mut ring = IoUring::new(16)?;
    let mut pool = Pool::builder(0)
        .count(count)
        .buf_len(buf_len)
        .incremental(incremental)
        .bundles(mode == Mode::Bundle)
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
    let bids = if count == 2 {
        "bid 0 and 1".to_string()
    } else {
        format!("bid 0 to {}", count - 1)
    };
    let kind = match pool.incremental() {
        Incremental::Kernel => "incremental ring",
        Incremental::Emulated => "classic ring with incremental consumption emulated by bufring",
        _ => "classic ring",
    };
    let request = if mode == Mode::Bundle {
        "one multishot bundle recv"
    } else {
        "one multishot recv"
    };
    say(format!(
        "{kind}, bgid 0: {count} buffers of {buf_len} bytes ({bids}); {request} on a TCP loopback pair"
    ));
    let arm = |ring: &mut IoUring, pool: &Pool| -> crate::CliResult {
        let sqe = if mode == Mode::Bundle {
            pool.recv_multishot_bundle(rx.as_raw_fd())
        } else {
            pool.recv_multishot(rx.as_raw_fd())
        };
        // SAFETY: the request ends (end of stream, waited for below) before the pool is dropped.
        unsafe { ring.submission().push(&sqe)? };
        ring.submit()?;
        Ok(())
    };
    arm(&mut ring, &pool)?;
    let mut cqe_index = 0u32;
    let mut shown = Vec::new();
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
            let before = pool.stats();
            let mut rearm = false;
            for (res, flags) in cqes {
                // SAFETY: reaped from the ring the pool is registered on; the pool's one receive
                // is the only request on it; each CQE is handed over once.
                let comp = unsafe { pool.complete(Cqe::new(res, flags))? };
                rearm |= comp.must_rearm();
                let (chunks, more) = match comp {
                    Completion::Data { chunks, more } => (chunks, more),
                    Completion::NoBuffers => return Err("the ring ran dry".into()),
                    Completion::EndOfStream => return Err("unexpected end of stream".into()),
                    Completion::Failed(e) => return Err(e.into()),
                };
                shown.clear();
                // The chunks are dropped at the end of this loop: a buffer goes back only
                // once the kernel has also retired it.
                for chunk in chunks {
                    shown.push(Shown {
                        len: chunk.len(),
                        bid: chunk.bid(),
                        offset: chunk.offset(),
                        buf_more: !chunk.is_last(),
                        addr: chunk.as_ptr(),
                    });
                }
                got += shown.iter().map(|s| s.len).sum::<usize>();
                if mode == Mode::Bundle && !args.json {
                    let total: usize = shown.iter().map(|s| s.len).sum();
                    println!(
                        "  completion: {total} bytes in {} buffer(s), starting at bid {}",
                        shown.len(),
                        shown[0].bid
                    );
                }
                for s in &shown {
                    print_chunk(&args, mode, cqe_index, s);
                }
                if !more && !args.json {
                    println!("  the multishot ended: re-armed after giving buffers back");
                }
                cqe_index += 1;
            }
            pool.publish();
            let after = pool.stats();
            let back = after.reposted - before.reposted;
            if back > 0 {
                say(format!(
                    "  {back} buffer(s) retired and released: posted back to the ring with their original address and full length"
                ));
            }
            let rests = after.emulated_reposts - before.emulated_reposts;
            if rests > 0 {
                say(format!(
                    "  {rests} partly used buffer(s): bufring posted the rest (address + cursor, same bid) at the ring tail"
                ));
            }
            if rearm {
                arm(&mut ring, &pool)?;
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
            // SAFETY: as above.
            if !matches!(
                unsafe { pool.complete(Cqe::new(res, flags))? },
                Completion::Data { more: true, .. }
            ) {
                break 'wait;
            }
        }
    }
    Ok(())
}

fn print_chunk(args: &Args, mode: Mode, cqe: u32, s: &Shown) {
    if args.json {
        let mut obj = serde_json::json!({
            "res": s.len, "bid": s.bid, "offset": s.offset, "buf_more": s.buf_more
        });
        if mode == Mode::Bundle {
            obj["cqe"] = cqe.into();
        }
        println!("{obj}");
    } else {
        println!(
            "  {}: {} bytes in bid {} at offset {} (address {:p}), F_BUF_MORE {}",
            if mode == Mode::Bundle {
                "  chunk"
            } else {
                "completion"
            },
            s.len,
            s.bid,
            s.offset,
            s.addr,
            match (s.buf_more, mode) {
                (true, Mode::Emulated) =>
                    "set (by bufring): the rest of this buffer goes back to the ring",
                (true, _) => "set: the kernel keeps filling this buffer",
                (false, _) => "clear: the kernel is done with this buffer",
            }
        );
    }
}
