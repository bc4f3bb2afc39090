//! The kernel model against the running kernel: the same scripts (writes of given sizes on a
//! TCP pair on loopback or on a pipe, multishot receives or reads, bundles, refills, end of
//! stream) run on both, and the CQE sequences (res, bid, F_MORE, F_BUF_MORE) and the ring
//! entries the kernel holds afterwards must be the same, step by step.

mod common;

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use bufring::model::{Cqe, KernelModel, ModelSocket, RecvKind};
use bufring::{Chunk, Completion, Incremental, Pool, PoolBuilder};
#[allow(unused_imports)]
use common::{one, Reap};
use io_uring::{opcode, types, IoUring};

/// One step of a script. Steps act on the current connection (0 until `On` says otherwise);
/// all connections share the pool's ring.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Later steps act on connection `c`.
    On(usize),
    /// The peer writes this many bytes (of the checked pattern).
    Write(usize),
    /// Submit a multishot receive (bundle: a multishot bundle receive).
    Arm(RecvKind),
    /// Submit one if the last one ended.
    Rearm(RecvKind),
    /// Drop the `n` oldest chunks and publish.
    Refill(usize),
    /// The peer shuts down its sending side.
    Shutdown,
}
use Step::*;

const MS: Step = Arm(RecvKind::Multishot);
const BUNDLE: Step = Arm(RecvKind::Bundle);
const SINGLE: Step = Rearm(RecvKind::Single);

/// What a step produced: the CQEs, and the entries the kernel holds afterwards as
/// (bid, offset into the buffer, len).
type Observed = (Vec<(i32, Option<u16>, bool, bool)>, Vec<(u16, u64, u32)>);

/// A world in which a script runs: the kernel, or the model.
trait World {
    fn step(&mut self, step: Step) -> Vec<Cqe>;
    fn posted(&self) -> Vec<(u16, u64, u32)>;
    fn pool(&mut self) -> &mut Pool;
}

/// One connection of the kernel world.
struct KConn {
    rx: OwnedFd,
    tx: Option<Box<dyn Write>>,
    armed: bool,
    outstanding: usize,
}

struct Kernel {
    ring: IoUring,
    pool: Pool,
    conns: Vec<KConn>,
    cur: usize,
    pipe: bool,
    addrs: Vec<u64>,
}

impl Kernel {
    /// The kernel world with `conns` TCP pairs (RECV), or pipes (READ), sharing one pool.
    fn with_transport(builder: PoolBuilder, pipe: bool, conns: usize) -> Option<Kernel> {
        let ring = common::uring(64)?;
        let pool = builder.build(&ring).expect("pool on the kernel");
        let conns = (0..conns)
            .map(|_| {
                let (rx, tx): (OwnedFd, Box<dyn Write>) = if pipe {
                    let (r, w) = pipe_pair();
                    (r, Box::new(std::fs::File::from(w)))
                } else {
                    let (rx, tx) = common::tcp_pair();
                    (rx.into(), Box::new(tx))
                };
                KConn {
                    rx,
                    tx: Some(tx),
                    armed: false,
                    outstanding: 0,
                }
            })
            .collect();
        let addrs = buffer_addrs(&pool);
        Some(Kernel {
            ring,
            pool,
            conns,
            cur: 0,
            pipe,
            addrs,
        })
    }

    /// Collects CQEs until the kernel has nothing more to say: on every connection, all
    /// written bytes received or the request ended; then 30 ms of quiet (to catch CQEs the
    /// model did not predict).
    fn settle(&mut self) -> Vec<Cqe> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        loop {
            let done = self.conns.iter().all(|c| !c.armed || c.outstanding == 0);
            let wait = if done { 30 } else { 1000 };
            let cqes = common::reap(&mut self.ring, Duration::from_millis(wait));
            if cqes.is_empty() && done {
                return out;
            }
            assert!(Instant::now() < deadline, "kernel did not settle: {out:?}");
            for (user_data, res, flags) in cqes {
                let c = &mut self.conns[user_data as usize];
                if !bufring::Cqe::new(0, flags).more() {
                    c.armed = false;
                }
                if res > 0 {
                    c.outstanding -= res as usize;
                }
                out.push(Cqe::new(res, flags));
            }
        }
    }
}

impl World for Kernel {
    fn step(&mut self, step: Step) -> Vec<Cqe> {
        let armed = self.conns[self.cur].armed;
        let step = match step {
            Rearm(kind) if !armed => Arm(kind),
            Rearm(_) => Refill(0),
            s => s,
        };
        let c = &mut self.conns[self.cur];
        match step {
            On(i) => self.cur = i,
            Write(n) => {
                c.tx.as_mut()
                    .expect("written after shutdown")
                    .write_all(&pattern(n))
                    .unwrap();
                c.outstanding += n;
            }
            Arm(kind) => {
                let fd = c.rx.as_raw_fd();
                let sqe = match kind {
                    RecvKind::Single if self.pipe => self.pool.read(fd, 0, u64::MAX),
                    RecvKind::Single => self.pool.recv(fd),
                    // READ_MULTISHOT with len 0: 6.18 answers any other len with -EINVAL.
                    RecvKind::Multishot if self.pipe => {
                        opcode::ReadMulti::new(types::Fd(fd), 0, self.pool.bgid()).build()
                    }
                    RecvKind::Multishot => self.pool.recv_multishot(fd),
                    RecvKind::Bundle => {
                        opcode::RecvMultiBundle::new(types::Fd(fd), self.pool.bgid()).build()
                    }
                };
                c.armed = true;
                common::push(&mut self.ring, &sqe.user_data(self.cur as u64));
            }
            Refill(_) | Rearm(_) => {}
            // Closing the sending side: FIN on TCP, end of file on a pipe.
            Shutdown => c.tx = None,
        }
        self.settle()
    }

    fn posted(&self) -> Vec<(u16, u64, u32)> {
        let ring = self.pool.ring().expect("a ring pool");
        let head = ring.head().expect("PBUF_STATUS");
        let n = ring.tail().wrapping_sub(head);
        (0..n)
            .map(|i| {
                let e = ring.entry(head.wrapping_add(i));
                (e.bid, e.addr - self.addrs[e.bid as usize], e.len)
            })
            .collect()
    }

    fn pool(&mut self) -> &mut Pool {
        &mut self.pool
    }
}

struct Model {
    model: KernelModel,
    pool: Pool,
    socks: Vec<ModelSocket>,
    cur: usize,
}

impl World for Model {
    fn step(&mut self, step: Step) -> Vec<Cqe> {
        let sock = &mut self.socks[self.cur];
        match step {
            On(i) => {
                self.cur = i;
                return Vec::new();
            }
            Write(n) => sock.write(&pattern(n)),
            Arm(kind) => sock.arm(kind),
            Rearm(kind) if sock.armed().is_none() => sock.arm(kind),
            Refill(_) | Rearm(_) => {}
            Shutdown => sock.shutdown(),
        }
        self.model.run(sock).expect("model")
    }

    fn posted(&self) -> Vec<(u16, u64, u32)> {
        let ring = self.model.ring();
        self.model
            .posted()
            .into_iter()
            .map(|(_, e)| (e.bid, e.addr - ring.buf_addr(e.bid), e.len))
            .collect()
    }

    fn pool(&mut self) -> &mut Pool {
        &mut self.pool
    }
}

/// Buffer base addresses, from the pool's initial ring entries (all posted, in bid order).
fn buffer_addrs(pool: &Pool) -> Vec<u64> {
    let ring = pool.ring().expect("a ring pool");
    let first = ring.tail().wrapping_sub(pool.count() as u16);
    (0..pool.count() as u16)
        .map(|i| ring.entry(first.wrapping_add(i)).addr)
        .collect()
}

/// A pipe: (read end, write end).
fn pipe_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are fresh and owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Runs `script` in `world`; completions go through the pool (unless `raw`), chunks are kept
/// until a refill drops them.
fn play(world: &mut dyn World, script: &[Step], raw: bool) -> Vec<Observed> {
    let mut held: VecDeque<Chunk> = VecDeque::new();
    let mut seen = Vec::new();
    for &step in script {
        let refill = match step {
            Refill(n) => Some(n),
            Rearm(_) => Some(0),
            _ => None,
        };
        if let Some(n) = refill {
            for _ in 0..n.min(held.len()) {
                held.pop_front();
            }
            world.pool().publish();
        }
        let cqes = world.step(step);
        if !raw {
            for c in &cqes {
                match world.pool().reap(c).expect("CQE rejected") {
                    Completion::Data { chunks, .. } => held.extend(chunks),
                    Completion::NoBuffers | Completion::EndOfStream => {}
                    Completion::Failed(e) => panic!("receive failed: {e}"),
                }
            }
        }
        seen.push((cqes.iter().map(|c| c.key()).collect(), world.posted()));
    }
    seen
}

/// Runs a script on both worlds and compares them step by step: on a TCP pair, and (for
/// multishot scripts that fit in a pipe's 64 KiB) on a pipe with READ_MULTISHOT, against the
/// same model.
fn differential(name: &str, builder: PoolBuilder, script: &[Step]) {
    let bundle = script.iter().any(|s| matches!(s, Arm(RecvKind::Bundle)));
    let written: usize = script
        .iter()
        .map(|s| if let Write(n) = s { *n } else { 0 })
        .sum();
    differential_on(name, builder.clone(), script, false);
    if !bundle && written <= 60_000 {
        differential_on(&format!("{name} [pipe]"), builder, script, true);
    }
}

fn differential_on(name: &str, builder: PoolBuilder, script: &[Step], pipe: bool) {
    let raw = script.iter().any(|s| matches!(s, Arm(RecvKind::Bundle)));
    let conns = 1 + script
        .iter()
        .map(|s| if let On(c) = s { *c } else { 0 })
        .max()
        .unwrap_or(0);
    let Some(mut kernel) = Kernel::with_transport(builder.clone(), pipe, conns) else {
        return;
    };
    // The model's pool makes no SQEs: say that bundles come, as the kernel pool's bundle
    // receives do.
    let (pool, ring) = builder.bundles(raw).build_detached().unwrap();
    let socket = || {
        if pipe {
            ModelSocket::pipe()
        } else {
            ModelSocket::new()
        }
    };
    let mut model = Model {
        model: KernelModel::new(ring),
        pool,
        socks: (0..conns).map(|_| socket()).collect(),
        cur: 0,
    };
    let k = play(&mut kernel, script, raw);
    let m = play(&mut model, script, raw);
    for (i, ((kc, kp), (mc, mp))) in k.iter().zip(&m).enumerate() {
        assert_eq!(
            kc, mc,
            "{name}: step {i} ({:?}): CQEs differ (left: kernel, right: model)",
            script[i]
        );
        assert_eq!(
            kp, mp,
            "{name}: step {i} ({:?}): posted entries differ (left: kernel, right: model)",
            script[i]
        );
    }
}

fn pool(count: usize, buf_len: usize, inc: bool) -> PoolBuilder {
    Pool::builder(3)
        .count(count)
        .buf_len(buf_len)
        .incremental(if inc {
            Incremental::Kernel
        } else {
            Incremental::Off
        })
}

fn both(name: &str, count: usize, buf_len: usize, script: &[Step]) {
    differential(
        &format!("{name} (classic)"),
        pool(count, buf_len, false),
        script,
    );
    differential(
        &format!("{name} (incremental)"),
        pool(count, buf_len, true),
        script,
    );
}

#[test]
fn demo_sequence() {
    both(
        "demo",
        2,
        32 * 1024,
        &[
            MS,
            Write(4096),
            Write(8192),
            Refill(2),
            Write(20480),
            Refill(1),
            Write(4096),
        ],
    );
}

#[test]
fn writes_larger_than_a_buffer() {
    both(
        "large writes",
        4,
        1000,
        &[
            MS,
            Write(2500),
            Refill(3),
            Write(1700),
            Refill(8),
            Write(999),
            Write(1),
        ],
    );
}

#[test]
fn exhaustion_gives_enobufs_and_rearm_delivers_the_rest() {
    both(
        "exhaustion",
        2,
        100,
        &[
            MS,
            Write(150),
            Write(150),
            Refill(8),
            MS,
            Write(250),
            Refill(8),
            MS,
        ],
    );
}

#[test]
fn arming_on_an_empty_ring() {
    both(
        "arm on empty",
        1,
        64,
        &[MS, Write(64), Write(1), MS, Refill(1), MS, Write(1)],
    );
}

#[test]
fn end_of_stream() {
    both("eof", 4, 100, &[MS, Write(10), Shutdown, MS]);
}

#[test]
fn end_of_stream_on_an_empty_ring() {
    both(
        "eof, empty ring",
        1,
        100,
        &[MS, Write(100), Shutdown, Refill(1), MS],
    );
}

#[test]
fn exact_fill_retires_the_buffer() {
    both(
        "exact fill",
        2,
        512,
        &[
            MS,
            Write(256),
            Write(256),
            Write(512),
            Refill(4),
            Write(300),
            Write(300),
        ],
    );
}

#[test]
fn min_left_retires_a_small_tail() {
    let script = [
        MS,
        Write(600),
        Write(200),
        Write(700),
        Write(250),
        Refill(8),
        Write(1000),
        Write(1),
    ];
    for min_left in [1, 300, 1000] {
        differential(
            &format!("min_left {min_left}"),
            pool(2, 1000, true).min_left(min_left),
            &script,
        );
    }
}

#[test]
fn bundles() {
    both(
        "bundle",
        8,
        100,
        &[BUNDLE, Write(50), Write(450), Write(100)],
    );
    both(
        "bundle, big first write",
        8,
        100,
        &[BUNDLE, Write(450), Write(120)],
    );
    both(
        "bundle, all buffers",
        4,
        100,
        &[BUNDLE, Write(120), Write(500)],
    );
    both("bundle, three", 3, 100, &[BUNDLE, Write(120), Write(500)]);
    both("bundle, one buffer", 1, 100, &[BUNDLE, Write(50)]);
    both(
        "bundle, small writes",
        8,
        100,
        &[BUNDLE, Write(50), Write(50), Write(50)],
    );
    both(
        "bundle, append",
        16,
        100,
        &[BUNDLE, Write(1000), Write(1000)],
    );
    both(
        "bundle, grown iovecs",
        64,
        100,
        &[BUNDLE, Write(1000), Write(1000), Write(30), Write(2000)],
    );
    for min_left in [30, 100] {
        differential(
            &format!("bundle, min_left {min_left}"),
            pool(8, 100, true).min_left(min_left),
            &[
                BUNDLE,
                Write(50),
                Write(45),
                Write(450),
                Write(100),
                Write(333),
            ],
        );
    }
    both(
        "bundle, odd sizes",
        32,
        100,
        &[
            BUNDLE,
            Write(1),
            Write(199),
            Write(301),
            Write(77),
            Write(1234),
        ],
    );
}

/// xorshift64*, so every random script is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Random scripts: writes of random sizes, refills of random counts, re-arms, on pools of
/// random shape (classic, incremental, incremental with min_left). BUFRING_DIFF_SCRIPTS sets
/// how many (default 12).
#[test]
fn random_scripts() {
    let scripts: u64 = std::env::var("BUFRING_DIFF_SCRIPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    for seed in 1..=scripts {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let count = 1 + rng.below(8) as usize;
        let buf_len = 1 + rng.below(3000) as usize;
        let inc = rng.below(2) == 1;
        let mut builder = pool(count, buf_len, inc);
        if inc && rng.below(2) == 1 {
            builder = builder.min_left(1 + rng.below(buf_len as u64) as u32);
        }
        // One script in four is a bundle receive, played raw (the pool does not take bundles):
        // writes only, until the ring runs dry.
        if seed % 4 == 0 {
            let mut script = vec![BUNDLE];
            for _ in 0..6 {
                script.push(Write(1 + rng.below(3 * buf_len as u64 + 10) as usize));
            }
            differential(
                &format!(
                    "random bundle script {seed} ({count} x {buf_len}, inc {inc}): {script:?}"
                ),
                builder,
                &script,
            );
            continue;
        }
        // Every third script uses single-shot receives, re-armed by its Rearm steps.
        let kind = if seed % 3 == 0 {
            RecvKind::Single
        } else {
            RecvKind::Multishot
        };
        // Every fifth script has two connections sharing the ring.
        let two = seed % 5 == 1;
        let mut script = vec![Rearm(kind)];
        if two {
            script.extend([On(1), Rearm(kind), On(0)]);
        }
        for _ in 0..12 {
            if two && rng.below(2) == 1 {
                script.push(On(rng.below(2) as usize));
            }
            script.push(match rng.below(6) {
                0..=2 => Write(1 + rng.below(2 * buf_len as u64 + 10) as usize),
                3 => Refill(1 + rng.below(count as u64 + 1) as usize),
                4 => Rearm(kind),
                _ => Refill(0),
            });
        }
        differential(
            &format!("random script {seed} ({count} x {buf_len}, inc {inc}): {script:?}"),
            builder,
            &script,
        );
    }
}

#[test]
fn kernel_allocated_ring_behaves_the_same() {
    differential(
        "kernel-allocated",
        pool(4, 1000, true).kernel_allocated(true),
        &[
            MS,
            Write(2500),
            Refill(3),
            Write(1700),
            Refill(8),
            Write(999),
            Write(1),
        ],
    );
}

#[test]
fn single_shot_receives() {
    both(
        "single",
        2,
        100,
        &[
            SINGLE,
            Write(40),
            SINGLE,
            Write(30),
            Write(200),
            SINGLE,
            Refill(2),
            SINGLE,
            SINGLE,
            Refill(8),
            SINGLE,
            Shutdown,
            SINGLE,
        ],
    );
}

#[test]
fn connections_share_one_ring() {
    both(
        "two connections",
        3,
        100,
        &[
            MS,
            On(1),
            MS,
            On(0),
            Write(50),
            On(1),
            Write(120),
            On(0),
            Write(80),
            On(1),
            Write(10),
            Refill(8),
            Rearm(RecvKind::Multishot),
            On(0),
            Rearm(RecvKind::Multishot),
            Write(30),
            On(1),
            Shutdown,
            On(0),
            Shutdown,
        ],
    );
}
