//! Accepting when file descriptors run out (its own test binary: it lowers the process's
//! descriptor limit). The driver must neither spin on EMFILE nor stop accepting for good.

mod common;

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bufring::driver::{Driver, Event, SocketId};

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the live struct passed.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn set_nofile(soft: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit with a live struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        let old = r.rlim_cur;
        r.rlim_cur = soft;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
        old
    }
}

/// Runs the driver for `t`, collecting accepted sockets and closed events.
fn run_for(d: &mut Driver, t: Duration, accepted: &mut Vec<SocketId>, closed: &mut usize) {
    let end = Instant::now() + t;
    while Instant::now() < end {
        d.run_once(Some(Duration::from_millis(20))).unwrap();
        while let Some(ev) = d.next_event() {
            match ev {
                Event::Accepted { socket, .. } => accepted.push(socket),
                Event::Closed { .. } => *closed += 1,
                Event::AcceptFailed { error, .. } => panic!("accepting stopped for good: {error}"),
                _ => {}
            }
        }
    }
}

/// Proves that on EMFILE accepting pauses without spinning (CPU time over a second of waiting
/// stays small), resumes as soon as one of the driver's sockets closes, and resumes by itself
/// (backoff) when descriptors free up elsewhere.
#[test]
fn emfile_pauses_accepting_without_spinning_and_recovers() {
    if common::uring(8).is_none() {
        return;
    }
    let mut d = Driver::new().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    d.listen(l).unwrap();
    let clients: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    // Room for about two more descriptors.
    let old = set_nofile(open + 1);
    let (mut accepted, mut closed) = (Vec::new(), 0);
    run_for(
        &mut d,
        Duration::from_millis(300),
        &mut accepted,
        &mut closed,
    );
    let first = accepted.len();
    assert!(
        (1..8).contains(&first),
        "accepted {first} of 8 with the limit at {}",
        open + 1
    );
    assert!(d.stats().accept_pauses >= 1, "{:?}", d.stats());

    // Paused: a second of waiting costs next to no CPU.
    let cpu = cpu_time();
    run_for(&mut d, Duration::from_secs(1), &mut accepted, &mut closed);
    let spent = cpu_time() - cpu;
    assert!(
        spent < Duration::from_millis(200),
        "{spent:?} of CPU while paused: spinning"
    );
    assert_eq!(accepted.len(), first, "no descriptor came free");

    // A socket of the driver closes: accepting resumes at once.
    d.close(accepted[0]).unwrap();
    run_for(
        &mut d,
        Duration::from_millis(200),
        &mut accepted,
        &mut closed,
    );
    assert_eq!(closed, 1);
    assert!(accepted.len() > first, "the freed descriptor was not used");

    // Descriptors free up elsewhere: the backoff retries by itself.
    set_nofile(old);
    run_for(
        &mut d,
        Duration::from_millis(2500),
        &mut accepted,
        &mut closed,
    );
    assert_eq!(accepted.len(), 8, "{:?}", d.stats());
    drop(clients);
}
