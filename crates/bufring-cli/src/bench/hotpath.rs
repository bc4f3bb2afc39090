//! `bench hotpath`: the user-space cost per completion of decode + chunk + drop + re-post +
//! publish, on a fabricated completion stream, against a C loop doing the same with liburing's
//! buf_ring add/advance.
//!
//! The pool is real (registered on a real io_uring) but no receive is ever submitted: each
//! fabricated completion names the buffer at the simulated head of the ring, exactly as the
//! kernel would pick it, so the pool checks it like a kernel one. Both sides pay the same
//! simulation cost (read the bid at the head, build the flags).

use std::time::{Duration, Instant};

use bufring::{Completion, Cqe, Incremental, Pool};
use io_uring::IoUring;

use super::{c, interleave, BenchResult, Common, Contender, Figure, Scenario};

const F_BUFFER: u32 = 1;
const F_MORE: u32 = 1 << 1;
const F_BUF_MORE: u32 = 1 << 4;
const COUNT: u32 = 64;
const BUF_LEN: u32 = 64 * 1024;

/// Options of `bench hotpath`.
#[derive(clap::Args)]
pub struct Args {
    /// Completions per run (default 4000000, 1000000 with --quick).
    #[arg(long)]
    completions: Option<u64>,
    /// Completions per publish (one tail store per batch, like one CQ reap).
    #[arg(long, default_value_t = 8)]
    batch: u32,
    /// Completions per buffer on the incremental pool (default 16: 4 KiB pieces of 64 KiB).
    #[arg(long, default_value_t = 16)]
    pieces: u32,
}

#[derive(Clone, Copy)]
enum Side {
    /// liburing's buf_ring add/advance in C.
    C,
    /// bufring's Pool.
    Pool,
    // `pool-emulated` goes here once Incremental::Emulated lands.
}

struct HotContender {
    side: Side,
    pieces: u32,
    n: u64,
    batch: u32,
}

impl Contender for HotContender {
    fn name(&self) -> String {
        match (self.side, self.pieces > 1) {
            (Side::C, false) => "liburing-c".into(),
            (Side::C, true) => "liburing-c-inc".into(),
            (Side::Pool, false) => "pool".into(),
            (Side::Pool, true) => "pool-inc".into(),
        }
    }

    fn run_once(&mut self) -> BenchResult<Vec<Figure>> {
        let ns = match self.side {
            Side::C => {
                let (ns, bytes) = c::hotpath(COUNT, BUF_LEN, self.pieces, self.n, self.batch)
                    .ok_or("built without liburing")?;
                check(bytes, self)?;
                ns as f64
            }
            Side::Pool => {
                let (d, bytes) = pool_loop(self.pieces, self.n, self.batch)?;
                check(bytes, self)?;
                d.as_nanos() as f64
            }
        };
        Ok(vec![Figure::down(
            "ns_per_completion",
            "ns",
            ns / self.n as f64,
        )])
    }
}

fn check(bytes: u64, c: &HotContender) -> BenchResult<()> {
    let want = c.n * u64::from(BUF_LEN / c.pieces);
    if bytes != want {
        return Err(format!("counted {bytes} bytes, expected {want}").into());
    }
    Ok(())
}

/// The Rust side: `n` fabricated completions through a real pool.
pub fn pool_loop(pieces: u32, n: u64, batch: u32) -> BenchResult<(Duration, u64)> {
    let ring = IoUring::new(8)?;
    let mode = if pieces > 1 {
        Incremental::Kernel
    } else {
        Incremental::Off
    };
    let mut pool = Pool::builder(0)
        .count(COUNT as usize)
        .buf_len(BUF_LEN as usize)
        .incremental(mode)
        .build(&ring)?;
    let piece = (BUF_LEN / pieces) as i32;
    let (mut head, mut k, mut inbatch) = (0u16, 0u32, 0u32);
    let mut bytes = 0u64;
    let t0 = Instant::now();
    for _ in 0..n {
        // The kernel's side, fabricated: the buffer at head, one piece of it.
        let Some(ring) = pool.ring() else {
            return Err("the pool has no buffer ring".into());
        };
        let bid = ring.entry(head).bid;
        k += 1;
        let last = k == pieces;
        if last {
            k = 0;
            head = head.wrapping_add(1);
        }
        let flags = F_BUFFER | F_MORE | (u32::from(bid) << 16) | if last { 0 } else { F_BUF_MORE };
        let (res, flags) = std::hint::black_box((piece, flags));
        // The application's side.
        // SAFETY: no request selects from this pool, so no kernel writes into it; the CQEs
        // are made up the way the kernel would make them (ring order), each handed over once.
        match unsafe { pool.complete(Cqe::new(res, flags))? } {
            Completion::Data { chunks, .. } => {
                for chunk in chunks {
                    std::hint::black_box(chunk.as_ptr());
                    bytes += chunk.len() as u64;
                }
            }
            other => return Err(format!("unexpected {other:?}").into()),
        }
        inbatch += 1;
        if inbatch == batch {
            pool.publish();
            inbatch = 0;
        }
    }
    Ok((t0.elapsed(), bytes))
}

pub fn run(args: &Args, common: &Common) -> BenchResult<Vec<Scenario>> {
    let n = args
        .completions
        .unwrap_or(if common.quick { 1_000_000 } else { 4_000_000 });
    if args.batch == 0 || args.batch >= COUNT / 2 {
        return Err(format!("--batch must be 1 to {}", COUNT / 2 - 1).into());
    }
    if args.pieces < 2 || BUF_LEN / args.pieces == 0 {
        return Err("--pieces must be 2 or more (and at most 65536)".into());
    }
    let mut out = Vec::new();
    for (title, pieces) in [
        (
            "classic: 64 x 64 KiB, 1 completion per buffer".to_string(),
            1,
        ),
        (
            format!(
                "incremental: 64 x 64 KiB, {} completions per buffer",
                args.pieces
            ),
            args.pieces,
        ),
    ] {
        let mut sides = vec![Side::Pool];
        let mut skipped = Vec::new();
        let c_name = if pieces > 1 {
            "liburing-c-inc"
        } else {
            "liburing-c"
        };
        match c::missing() {
            None => sides.insert(0, Side::C),
            Some(why) => skipped.push((c_name.to_string(), why.to_string())),
        }
        let contenders: Vec<Box<dyn Contender>> = sides
            .into_iter()
            .map(|side| {
                Box::new(HotContender {
                    side,
                    pieces,
                    n,
                    batch: args.batch,
                }) as Box<dyn Contender>
            })
            .filter(|c| common.wants(&c.name()))
            .collect();
        skipped.retain(|(n, _)| common.wants(n));
        out.push(interleave(
            "hotpath",
            title,
            c_name,
            contenders,
            skipped,
            common
                .rounds
                .unwrap_or(if common.quick { 3 } else { 7 })
                .max(1),
            Duration::from_secs(if common.quick { 4 } else { 20 }),
        ));
    }
    Ok(out)
}
