//! Micro-benchmarks of the pool's hot path: a completion is checked and turned into a chunk,
//! the chunk is dropped, the buffer returns and is re-posted, and a batch is published.
//!
//! The completions are fabricated (the kernel is not asked to receive anything): each takes the
//! buffer at the simulated head of the ring, as the kernel would, so the pool checks them like
//! real ones. A real io_uring is needed for the registration; without one the benches skip.

use bufring::{Completion, Cqe, Incremental, Pool};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use io_uring::IoUring;

const F_BUFFER: u32 = 1;
const F_MORE: u32 = 1 << 1;
const F_BUF_MORE: u32 = 1 << 4;

/// A pool fed with fabricated completions in ring order.
struct Sim {
    pool: Pool,
    head: u16,
    pieces: u32,
    piece: i32,
    k: u32,
}

impl Sim {
    fn new(ring: &IoUring, count: usize, buf_len: usize, pieces: u32) -> Sim {
        let mode = if pieces > 1 {
            Incremental::Kernel
        } else {
            Incremental::Off
        };
        let pool = Pool::builder(0)
            .count(count)
            .buf_len(buf_len)
            .incremental(mode)
            .build(ring)
            .expect("pool");
        Sim {
            pool,
            head: 0,
            pieces,
            piece: (buf_len as u32 / pieces) as i32,
            k: 0,
        }
    }

    /// The kernel's side: the next completion.
    #[inline]
    fn cqe(&mut self) -> (i32, u32) {
        let bid = self
            .pool
            .ring()
            .expect("a buffer ring")
            .entry(self.head)
            .bid;
        self.k += 1;
        let last = self.k == self.pieces;
        if last {
            self.k = 0;
            self.head = self.head.wrapping_add(1);
        }
        let flags = F_BUFFER | F_MORE | (u32::from(bid) << 16) | if last { 0 } else { F_BUF_MORE };
        (self.piece, flags)
    }

    /// Completes one made-up CQE.
    #[inline]
    fn complete(&mut self) -> bufring::Result<Completion> {
        let (res, flags) = self.cqe();
        // SAFETY: no request selects from this pool, so no kernel writes into it; the CQEs are
        // made up the way the kernel would make them (ring order), each handed over once.
        unsafe { self.pool.complete(Cqe::new(res, flags)) }
    }

    /// The application's side for `batch` completions, then one publish.
    #[inline]
    fn batch(&mut self, batch: usize) -> usize {
        let mut bytes = 0;
        for _ in 0..batch {
            match self.complete() {
                Ok(Completion::Data { chunks, .. }) => bytes += chunks.total_len(),
                other => panic!("unexpected {other:?}"),
            }
        }
        self.pool.publish();
        bytes
    }
}

fn hot_path(c: &mut Criterion) {
    let ring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skipped: io_uring unavailable ({e})");
            return;
        }
    };
    const BATCH: usize = 8;
    let mut g = c.benchmark_group("pool_hot_path");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, count, buf_len, pieces) in [
        ("classic_64x64K", 64, 64 << 10, 1),
        ("incremental_64x64K_16_pieces", 64, 64 << 10, 16),
        ("incremental_4x1M_16_pieces", 4, 1 << 20, 16),
    ] {
        let mut sim = Sim::new(&ring, count, buf_len, pieces);
        g.bench_function(name, |b| b.iter(|| std::hint::black_box(sim.batch(BATCH))));
    }
    g.finish();

    // A chunk split in two: one more reference taken and given back per completion.
    let mut sim = Sim::new(&ring, 64, 64 << 10, 1);
    c.bench_function("chunk_split_and_drop", |b| {
        b.iter(|| {
            let chunks = sim.complete().unwrap().into_chunks().unwrap();
            let mut chunk = chunks.into_single().unwrap();
            let front = chunk.split_to(chunk.len() / 2);
            drop(std::hint::black_box(front));
            drop(chunk);
            sim.pool.publish()
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
