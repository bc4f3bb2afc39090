//! The in-runtime mode ([`Builder::build_local`](crate::Builder::build_local)): the [`Core`]
//! lives in a future the user spawns on a `LocalSet` (or runs on a current-thread runtime),
//! registered with tokio's reactor through the driver's readiness fd. No thread of its own: a
//! batch of completions and the tasks it wakes run on the same thread, and a command wakes the
//! driver's task like any other task.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bufring::driver::TimerId;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::core::{to_io, Core};
use crate::stopped;

/// Rounds of commands, completions and events one poll of the driver's task runs before it
/// yields to the runtime's other tasks.
const BUDGET: usize = 16;

/// The shortest timer armed for the driver's own deadlines.
const MIN_WAIT: Duration = Duration::from_micros(100);

/// The driver's task's waker, for commands sent while it sleeps.
#[derive(Default)]
pub(crate) struct TaskWake {
    waker: Mutex<Option<Waker>>,
}

impl TaskWake {
    fn register(&self, w: &Waker) {
        let mut slot = self.waker.lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some(old) if old.will_wake(w) => {}
            _ => *slot = Some(w.clone()),
        }
    }

    pub(crate) fn wake(&self) {
        let w = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// The driver of a [`Uring`](crate::Uring) made by
/// [`Builder::build_local`](crate::Builder::build_local): a future to spawn with
/// `tokio::task::spawn_local` (or to run with `LocalSet::run_until`/`block_on` beside the
/// tasks). It is `!Send` (the driver's ring stays on the thread that made it) and resolves when
/// the last `Uring` handle is dropped (`Ok`) or the ring fails (its error). Dropping it ends
/// every stream still open (an error item, `ConnectionAborted`, then the end) and drops the
/// driver, which cancels its requests and waits for them (at most 2 s, on this thread).
pub struct LocalDriver {
    /// The reactor's registration of (a duplicate of) the driver's readiness fd.
    ready: Option<AsyncFd<OwnedFd>>,
    /// And of its wake-up eventfd (`Driver::wake_fd`: chunk drops while receives wait for
    /// buffers, `DriverWaker`), which the kernel may not signal through the readiness fd.
    woken: Option<AsyncFd<OwnedFd>>,
    core: Option<Core>,
    task: Arc<TaskWake>,
    /// The driver timer armed for the next deadline, and when it fires.
    timer: Option<(TimerId, Instant)>,
}

impl std::fmt::Debug for LocalDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDriver")
            .field("running", &self.core.is_some())
            .finish_non_exhaustive()
    }
}

impl LocalDriver {
    /// Registers the driver's readiness fd with the current runtime's reactor. Fails where the
    /// kernel has no usable readiness fd (`Unsupported`, before 6.13), outside a runtime, or on
    /// a runtime without I/O (`enable_io`).
    pub(crate) fn new(mut core: Core, task: Arc<TaskWake>) -> io::Result<LocalDriver> {
        // The reactor gets duplicates of the eventfds (the same files, so the same readiness),
        // owned by the registrations: each stays open exactly as long as its registration.
        let ready = core
            .driver
            .readiness_fd()
            .map_err(to_io)?
            .try_clone_to_owned()?;
        let woken = core.driver.wake_fd().try_clone_to_owned()?;
        let ready = register(ready)?;
        let woken = register(woken)?;
        Ok(LocalDriver {
            ready: Some(ready),
            woken: Some(woken),
            core: Some(core),
            task,
            timer: None,
        })
    }

    /// Ends the streams and drops the driver (after the registration).
    fn finish(&mut self, why: io::Error) {
        self.ready = None;
        self.woken = None;
        if let Some(core) = self.core.take() {
            core.finish(why);
        }
    }

    /// Makes sure a driver timer wakes the ring within `wait` (one timer at a time: an
    /// earlier deadline replaces a later one); true if it armed one. Its completion signals
    /// the readiness fd.
    fn wake_within(&mut self, wait: Duration) -> bool {
        let Some(core) = self.core.as_mut() else {
            return false;
        };
        let now = Instant::now();
        let at = now + wait;
        match self.timer {
            Some((_, fires)) if fires > now && fires <= at => return false,
            Some((id, fires)) if fires > now => core.driver.cancel_timer(id),
            _ => {}
        }
        self.timer = Some((core.driver.timer(wait), at));
        true
    }

    /// One poll: rounds of commands and a non-blocking step of the ring, until a step brings
    /// events (then it handles them and yields, so that the tasks they fed run first), nothing
    /// is left (then `Pending`, with the readiness fd, the wake-up fd and the commands watched)
    /// or the budget is spent (then it yields).
    fn step(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.task.register(cx.waker());
        for _ in 0..BUDGET {
            let Some(core) = self.core.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            core.sleeping.store(false, Ordering::SeqCst);
            if core.take_commands() {
                self.finish(stopped());
                return Poll::Ready(Ok(()));
            }
            // One batch: if the kernel may have more, this task comes back for it (below), so
            // the readiness fd need not be signalled for it.
            let more = match core.driver.poll_batch() {
                Ok(more) => more,
                Err(e) => {
                    let e = to_io(e);
                    let out = io::Error::new(e.kind(), e.to_string());
                    self.finish(e);
                    return Poll::Ready(Err(out));
                }
            };
            if core.events() > 0 {
                // The batch woke the tasks it fed: let them run (and drop their chunks, giving
                // buffers back) before the next batch, rather than filling their queues further
                // while they wait. Re-queued behind them.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if more {
                continue;
            }
            let wait = [core.spill_idle(), core.driver.next_timeout(), core.max_wait]
                .into_iter()
                .flatten()
                .min();
            // A deadline already past is met by the next step of the ring (its policy runs
            // at every step); the floor keeps that from becoming a spin.
            if let Some(wait) = wait.map(|w| w.max(MIN_WAIT)) {
                if self.wake_within(wait) {
                    // The next round's step submits the new timer.
                    continue;
                }
            }
            let (Some(ready), Some(woken)) = (self.ready.as_ref(), self.woken.as_ref()) else {
                return Poll::Ready(Ok(()));
            };
            // Only watched, never read here: the ring's own read takes the count.
            if let Poll::Ready(Ok(mut guard)) = woken.poll_read_ready(cx) {
                guard.clear_ready();
                continue;
            }
            match ready.poll_read_ready(cx) {
                Poll::Ready(Ok(mut guard)) => {
                    // Cleared before the next step reads the eventfd: a signal after that read
                    // is a new edge, seen by the next poll.
                    guard.clear_ready();
                    continue;
                }
                Poll::Ready(Err(e)) => {
                    let out = io::Error::new(e.kind(), e.to_string());
                    self.finish(e);
                    return Poll::Ready(Err(out));
                }
                Poll::Pending => {}
            }
            let Some(core) = self.core.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match core.about_to_sleep() {
                None => return Poll::Pending,
                Some(cmd) => {
                    if core.command(cmd) {
                        self.finish(stopped());
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Registers `fd` with the current runtime's reactor, for reading.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // tokio panics, not errs, outside a runtime or on one whose I/O driver is off.
    std::panic::catch_unwind(|| {
        // SAFETY: the reactor keeps the fd's number registered with epoll until the `AsyncFd`
        // is dropped; the `OwnedFd` inside it keeps that number open and naming the same
        // eventfd for exactly that long, and `as_raw_fd` always returns it.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
    })
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "build_local must be called inside a tokio runtime with I/O enabled (enable_io)",
        )
    })?
    .map_err(io::Error::from)
}

impl Future for LocalDriver {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.step(cx)
    }
}

impl Drop for LocalDriver {
    fn drop(&mut self) {
        self.finish(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the bufring-tokio LocalDriver was dropped",
        ));
    }
}
