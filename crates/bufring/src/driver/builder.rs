//! The driver's configuration, and building one: its ring (SINGLE_ISSUER and DEFER_TASKRUN
//! where the kernel has them) and its eventfd.

use super::*;

/// Configures a [`Driver`].
#[derive(Clone)]
pub struct DriverBuilder {
    pub(super) entries: u32,
    pub(super) cq_entries: u32,
    pub(super) quota: (usize, usize),
    pub(super) initial_posted: u32,
    pub(super) min_posted: u32,
    pub(super) elastic: bool,
    pub(super) window: Duration,
    pub(super) spill_after: Duration,
    pub(super) defer_taskrun: bool,
    pub(super) ring: Option<io_uring::Builder>,
}

impl std::fmt::Debug for DriverBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverBuilder")
            .field("entries", &self.entries)
            .field("cq_entries", &self.cq_entries)
            .field("recv_quota", &self.quota)
            .field("initial_posted", &self.initial_posted)
            .field("min_posted", &self.min_posted)
            .field("elastic", &self.elastic)
            .field("window", &self.window)
            .field("spill_after", &self.spill_after)
            .field("defer_taskrun", &self.defer_taskrun)
            .field("ring_builder", &self.ring.is_some())
            .finish()
    }
}

impl Default for DriverBuilder {
    fn default() -> Self {
        DriverBuilder {
            entries: 256,
            cq_entries: 8192,
            quota: (64 * 1024, 1 << 20),
            initial_posted: 4,
            min_posted: 2,
            elastic: true,
            window: Duration::from_secs(1),
            spill_after: Duration::from_millis(5),
            defer_taskrun: true,
            ring: None,
        }
    }
}

impl DriverBuilder {
    /// Submission queue entries (default 256).
    pub fn entries(mut self, n: u32) -> Self {
        self.entries = n;
        self
    }

    /// Completion queue entries (default 8192: a full queue ends multishot receives early).
    pub fn cq_entries(mut self, n: u32) -> Self {
        self.cq_entries = n;
        self
    }

    /// Bounds of a socket's receive quota, in bytes: a fair share of its pool, at least
    /// `floor`, at most `ceiling` (default 64 KiB and 1 MiB).
    pub fn recv_quota(mut self, floor: usize, ceiling: usize) -> Self {
        self.quota = (floor, ceiling);
        self
    }

    /// Buffers a pool posts at the start, unless its builder says
    /// ([`PoolBuilder::posted`]); default 4.
    pub fn initial_posted(mut self, n: u32) -> Self {
        self.initial_posted = n;
        self
    }

    /// The fewest buffers elastic posting keeps posted (default 2).
    pub fn min_posted(mut self, n: u32) -> Self {
        self.min_posted = n;
        self
    }

    /// Elastic posting on (default) or off (every buffer stays posted, as with a raw pool).
    pub fn elastic(mut self, on: bool) -> Self {
        self.elastic = on;
        self
    }

    /// How often elastic posting shrinks targets and gives idle pages back (default 1 s).
    pub fn window(mut self, d: Duration) -> Self {
        self.window = d;
        self
    }

    /// How long receives wait for buffers, with the pool dry, before the driver spills held
    /// chunks to the heap (default 5 ms): time for the application to read and drop what it
    /// was handed (some kernels end a multishot receive for lack of buffers right after a
    /// completion, before anything could be read).
    pub fn spill_after(mut self, d: Duration) -> Self {
        self.spill_after = d;
        self
    }

    /// Ask for IORING_SETUP_DEFER_TASKRUN (default on, where the kernel has it): completions
    /// are processed when the driver waits or steps, not on interrupts.
    pub fn defer_taskrun(mut self, on: bool) -> Self {
        self.defer_taskrun = on;
        self
    }

    /// Builds the ring with `builder` (SQPOLL, a CPU, ... ) instead of the driver's choice,
    /// adding only the completion queue size: the driver then runs with what it gets. Without
    /// IORING_SETUP_TASKRUN_FLAG next to DEFER_TASKRUN, [`Driver::poll`] may leave deferred work
    /// for the next [`Driver::run_once`] that waits.
    pub fn ring_builder(mut self, builder: io_uring::Builder) -> Self {
        self.ring = Some(builder);
        self
    }

    /// Checks the configuration and makes the driver, with its ring and eventfd.
    pub fn build(self) -> Result<Driver> {
        if self.entries == 0 || self.cq_entries < self.entries {
            return Err(Error::config(
                "entries",
                format!(
                    "{} submission and {} completion entries: need 1 or more, and at least as many completion entries",
                    self.entries, self.cq_entries
                ),
            ));
        }
        if self.quota.0 == 0 || self.quota.0 > self.quota.1 {
            return Err(Error::config(
                "recv_quota",
                format!(
                    "floor {} and ceiling {}: need 0 < floor <= ceiling",
                    self.quota.0, self.quota.1
                ),
            ));
        }
        if self.initial_posted == 0 || self.min_posted == 0 {
            return Err(Error::config(
                "initial_posted",
                "a pool needs at least one buffer posted",
            ));
        }
        if self.window.is_zero() {
            return Err(Error::config(
                "window",
                "the elastic window must not be zero",
            ));
        }
        // Whether the ring defers task work (not known of a ring the user's builder made).
        let mut deferred = false;
        let ring = match &self.ring {
            Some(b) => b.clone().setup_cqsize(self.cq_entries).build(self.entries),
            None => {
                let mut plain = IoUring::builder();
                plain.setup_cqsize(self.cq_entries);
                // One thread submits and reaps (6.0). TASKRUN_FLAG: the kernel flags deferred
                // work in the SQ ring, so a non-waiting step (`poll`) knows to enter with
                // GETEVENTS and run it.
                // No COOP_TASKRUN here: it lets task work wait for the thread's next kernel
                // entry, and a runtime polling the ring fd (no deferred work) sleeps in poll(2)
                // meanwhile, never woken.
                let mut single = plain.clone();
                single.setup_single_issuer().setup_taskrun_flag();
                // Completions processed when the driver enters, not on interrupts (6.1).
                let mut deferring = single.clone();
                deferring.setup_coop_taskrun().setup_defer_taskrun();
                let first = if self.defer_taskrun {
                    deferring.build(self.entries)
                } else {
                    single.build(self.entries)
                };
                deferred = self.defer_taskrun && first.is_ok();
                first
                    .or_else(|_| single.build(self.entries))
                    .or_else(|_| plain.build(self.entries))
            }
        }
        .map_err(|e| Error::kernel("io_uring_setup", e))?;
        // SAFETY: eventfd has no memory-safety preconditions.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(Error::kernel("eventfd", io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd that nothing else owns.
        let notify = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let mut d = Driver {
            pools: Vec::new(),
            sockets: Vec::new(),
            free_sockets: Vec::new(),
            listeners: Vec::new(),
            ops: Ops::default(),
            ring,
            events: VecDeque::new(),
            backlog: VecDeque::new(),
            submit_error: None,
            waker: Arc::new(WakerInner {
                fd: Arc::clone(&notify),
                woken: AtomicBool::new(false),
            }),
            notify,
            wake_armed: false,
            ready: None,
            custom_ring: self.ring.is_some(),
            released: None,
            deferred,
            multishot_recv: true,
            recv_limit: true,
            multishot_accept: true,
            cfg: self,
            stats: DriverStats::default(),
            cqes: Vec::new(),
            window_start: Instant::now(),
            now: Instant::now(),
            epoch: Instant::now(),
            recvs: 0,
            next_idle_check: None,
            idle_sockets: 0,
            accept_retry: None,
            accept_backoff: Duration::from_millis(10),
            _not_send: PhantomData,
        };
        d.arm_wake();
        Ok(d)
    }
}
