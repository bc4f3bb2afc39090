//! The driver thread (the default): owns the [`Core`] and blocks in the ring
//! (`Driver::run_once`) between batches; a command wakes it through the driver's waker.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bufring::driver::DriverWaker;

use crate::core::{to_io, Cmd, Core};
use crate::{stopped, Builder};

/// The thread's body. `done` is dropped when it returns, after the driver: the `Uring`'s drop
/// waits for that.
pub(crate) fn run(
    cfg: Builder,
    rx: mpsc::Receiver<Cmd>,
    sleeping: Arc<AtomicBool>,
    init: mpsc::Sender<io::Result<DriverWaker>>,
    done: mpsc::Sender<()>,
) {
    let _done = done;
    let mut core = match Core::new(&cfg, rx, sleeping) {
        Ok(core) => core,
        Err(e) => {
            let _ = init.send(Err(e));
            return;
        }
    };
    if init.send(Ok(core.driver.waker())).is_err() {
        return;
    }
    // A panic in here must not leave tasks waiting for ever: end their streams, then drop the
    // driver (which cancels and waits for its requests) as usual.
    let end = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(&mut core))) {
        Ok(end) => end,
        Err(_) => io::Error::other("the bufring-tokio driver thread panicked"),
    };
    core.finish(end);
}

/// Runs until `Stop` (`stopped()`) or a ring failure (its error).
fn serve(core: &mut Core) -> io::Error {
    loop {
        if core.take_commands() {
            return stopped();
        }
        core.events();
        let wait = match (core.spill_idle(), core.max_wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(cmd) = core.about_to_sleep() {
            if core.command(cmd) {
                return stopped();
            }
            // The driver must submit what the command queued: no sleep this round.
            if let Err(e) = core.driver.run_once(Some(Duration::ZERO)) {
                return to_io(e);
            }
            continue;
        }
        // A command queued from here on finds `sleeping` set and wakes this wait
        // (DriverWaker), if an earlier one has not already.
        let r = core.driver.run_once(wait);
        core.sleeping.store(false, Ordering::SeqCst);
        if let Err(e) = r {
            return to_io(e);
        }
    }
}
