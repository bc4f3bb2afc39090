//! Pipes and files: multishot reads of a pipe into classic, kernel-incremental and emulated
//! pools; reads of a regular file into an incremental pool, where the kernel commits the
//! selected length (not the bytes read) and F_BUF_MORE comes with end of file.

mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use bufring::Cqe;
use bufring::{Completion, Error, Incremental, Pool};
#[allow(unused_imports)]
use common::{one, Reap};
use common::{Checker, Pattern};

fn build(
    ring: &io_uring::IoUring,
    bgid: u16,
    mode: Incremental,
    count: usize,
    len: usize,
) -> Option<Pool> {
    match Pool::builder(bgid)
        .count(count)
        .buf_len(len)
        .incremental(mode)
        .build(ring)
    {
        Ok(p) => Some(p),
        Err(Error::Unsupported { feature }) => {
            eprintln!("SKIPPED: {feature} unsupported here");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn pipe() -> (OwnedFd, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are fresh and owned by nobody else.
    unsafe {
        (
            OwnedFd::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

fn pipe_stream(mode: Incremental, bgid: u16) {
    let mut ring = require_uring!();
    if !bufring::Probe::run_on(&ring).read_multishot {
        eprintln!("SKIPPED: no read multishot");
        return;
    }
    let Some(mut pool) = build(&ring, bgid, mode, 8, 16 * 1024) else {
        return;
    };
    let total = 6 << 20;
    let (rx, mut tx) = pipe();
    let writer = std::thread::spawn(move || {
        let mut data = Pattern::new(77);
        let mut sizes = Pattern::new(78);
        let mut buf = vec![0u8; 20_000];
        let mut sent = 0;
        while sent < total {
            let n = (1 + sizes.next_u64() as usize % buf.len()).min(total - sent);
            data.fill(&mut buf[..n]);
            tx.write_all(&buf[..n]).unwrap();
            sent += n;
        }
    });
    let mut check = Checker::new(77);
    let mut held = std::collections::VecDeque::new();
    let mut holds = Pattern::new(5);
    let (mut enobufs, mut partial) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    common::push(&mut ring, &pool.read_multishot(rx.as_raw_fd(), 0, 0));
    'outer: loop {
        assert!(Instant::now() < deadline, "pipe stream not done");
        let mut rearm = false;
        for (_, res, flags) in common::reap(&mut ring, Duration::from_millis(200)) {
            let c = pool
                .reap(Cqe::new(res, flags))
                .expect("kernel completion rejected");
            rearm |= c.must_rearm();
            match c {
                Completion::Data { chunks, .. } => {
                    let chunk = one(chunks);
                    check.check(&chunk);
                    partial += usize::from(!chunk.is_last());
                    held.push_back(chunk);
                }
                Completion::NoBuffers => {
                    enobufs += 1;
                    held.clear();
                }
                Completion::EndOfStream => break 'outer,
                Completion::Failed(e) => panic!("{e}"),
            }
        }
        let keep = holds.next_u64() as usize % 5;
        while held.len() > keep {
            held.pop_front();
        }
        pool.publish();
        if rearm {
            common::push(&mut ring, &pool.read_multishot(rx.as_raw_fd(), 0, 0));
        }
    }
    writer.join().unwrap();
    assert_eq!(check.received, total);
    eprintln!(
        "{mode:?}: enobufs {enobufs}, partial chunks {partial}, {:?}",
        pool.stats()
    );
    assert!(enobufs > 0, "the ring never ran dry");
    if mode != Incremental::Off {
        assert!(partial > 0);
    }
}

#[test]
fn pipe_read_multishot_classic() {
    pipe_stream(Incremental::Off, 1);
}

#[test]
fn pipe_read_multishot_kernel_incremental() {
    pipe_stream(Incremental::Kernel, 2);
}

#[test]
fn pipe_read_multishot_emulated() {
    pipe_stream(Incremental::Emulated, 3);
}

/// A scratch file of `len` pattern bytes, removed on drop.
struct TempFile(std::path::PathBuf, std::fs::File, Vec<u8>);

impl TempFile {
    fn new(tag: &str, len: usize) -> Self {
        let path = std::env::temp_dir().join(format!("bufring-{tag}-{}", std::process::id()));
        let mut data = vec![0u8; len];
        Pattern::new(9).fill(&mut data);
        std::fs::write(&path, &data).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        TempFile(path, f, data)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One read of `len` bytes at `off`, completed as a file read.
fn read_once(
    ring: &mut io_uring::IoUring,
    pool: &mut Pool,
    f: &TempFile,
    len: u32,
    off: u64,
) -> Completion {
    common::push(ring, &pool.read(f.1.as_raw_fd(), len, off));
    let cqes = common::reap(ring, Duration::from_secs(5));
    assert_eq!(cqes.len(), 1);
    let (_, res, flags) = cqes[0];
    pool.reap(Cqe::new(res, flags))
        .expect("kernel completion rejected")
}

/// Where the kernel's entry for the current buffer starts, relative to `base` (the kernel's
/// own view, to hold the pool's cursor against).
fn kernel_cursor(pool: &Pool, base: u64) -> u64 {
    let ring = pool.ring().unwrap();
    ring.entry(ring.head().unwrap()).addr - base
}

#[test]
fn file_reads_land_at_consecutive_offsets_kernel_incremental() {
    let mut ring = require_uring!();
    let Some(mut pool) = build(&ring, 4, Incremental::Kernel, 4, 9192) else {
        return;
    };
    let file = TempFile::new("inc-read", 20_000);
    const L: u32 = 3000;
    let mut chunks = Vec::new();
    // Buffers of 9192 bytes: reads of 3000 at 0, 3000, 6000 land at offsets 0, 3000, 6000 of
    // bid 0; the next one gets the 192 bytes left and retires it.
    for (i, off) in [0u64, 3000, 6000, 9000].into_iter().enumerate() {
        let c = read_once(&mut ring, &mut pool, &file, L, off)
            .into_chunks()
            .map(one)
            .unwrap();
        let want = if i < 3 { L as usize } else { 192 };
        assert_eq!((c.bid(), c.offset(), c.len()), (0, off as u32, want));
        assert_eq!(&c[..], &file.2[off as usize..off as usize + want]);
        assert_eq!(c.is_last(), i == 3);
        chunks.push(c);
    }
    let base1 = {
        let c = read_once(&mut ring, &mut pool, &file, L, 9192)
            .into_chunks()
            .map(one)
            .unwrap();
        assert_eq!((c.bid(), c.offset(), c.len()), (1, 0, 3000));
        let base = c.as_ptr() as u64;
        chunks.push(c);
        base
    };
    assert_eq!(kernel_cursor(&pool, base1), 3000);
    // A short read at the end of the file: 500 bytes, but the kernel takes 3000 of the buffer.
    let c = read_once(&mut ring, &mut pool, &file, L, 19_500)
        .into_chunks()
        .map(one)
        .unwrap();
    assert_eq!(
        (c.bid(), c.offset(), c.len(), c.is_last()),
        (1, 3000, 500, false)
    );
    assert_eq!(&c[..], &file.2[19_500..]);
    chunks.push(c);
    assert_eq!(pool.cursor(1), Some(6000));
    assert_eq!(kernel_cursor(&pool, base1), 6000);
    // End of file: result 0 with F_BUF_MORE, and the selected length is used up all the same.
    assert!(matches!(
        read_once(&mut ring, &mut pool, &file, 1000, 20_000),
        Completion::EndOfStream
    ));
    assert_eq!(pool.cursor(1), Some(7000));
    assert_eq!(kernel_cursor(&pool, base1), 7000);
    // The next read lands where the kernel puts it: the 2192 bytes left.
    let c = read_once(&mut ring, &mut pool, &file, L, 0)
        .into_chunks()
        .map(one)
        .unwrap();
    assert_eq!(
        (c.bid(), c.offset(), c.len(), c.is_last()),
        (1, 7000, 2192, true)
    );
    assert_eq!(&c[..], &file.2[..2192]);
    chunks.push(c);
    assert_eq!(pool.stats().rejected, 0);
    drop(chunks);
    pool.publish();
    assert_eq!(pool.stats().with_app, 0);
}

fn file_reads(mode: Incremental, bgid: u16) {
    let mut ring = require_uring!();
    let Some(mut pool) = build(&ring, bgid, mode, 4, 8192) else {
        return;
    };
    let file = TempFile::new(&format!("read-{bgid}"), 100_000);
    let mut off = 0usize;
    let mut sizes = Pattern::new(4);
    let mut held = std::collections::VecDeque::new();
    while off < file.2.len() {
        let len = 1 + sizes.next_u64() as u32 % 5000;
        match read_once(&mut ring, &mut pool, &file, len, off as u64) {
            Completion::Data { chunks, .. } => {
                let chunk = one(chunks);
                assert!(chunk.len() <= len as usize);
                assert_eq!(&chunk[..], &file.2[off..off + chunk.len()]);
                off += chunk.len();
                held.push_back(chunk);
                if held.len() > 2 {
                    held.pop_front();
                }
            }
            other => panic!("{other:?}"),
        }
        pool.publish();
    }
    assert!(matches!(
        read_once(&mut ring, &mut pool, &file, 100, off as u64),
        Completion::EndOfStream
    ));
    held.clear();
    pool.publish();
    assert_eq!(pool.stats().rejected, 0);
    assert_eq!(pool.stats().with_app, 0);
}

#[test]
fn file_reads_classic() {
    file_reads(Incremental::Off, 5);
}

#[test]
fn file_reads_kernel_incremental() {
    file_reads(Incremental::Kernel, 6);
}

#[test]
fn file_reads_emulated() {
    file_reads(Incremental::Emulated, 7);
}

/// The pool reads a completion the way its SQE builder says: after `read` of a regular file
/// on a kernel incremental pool, a completion uses up the length asked for. (The SQEs are
/// built, not submitted: the CQEs are made up, and no kernel writes into the pool.)
#[test]
fn forged_file_reads_are_checked_against_the_selected_length() {
    let ring = require_uring!();
    let Some(mut pool) = build(&ring, 8, Incremental::Kernel, 2, 4096) else {
        return;
    };
    let file = TempFile::new("forged", 100);
    let f = |bid: u32, more: bool| 1 | (bid << 16) | if more { 1 << 4 } else { 0 };
    let _ = pool.read(file.1.as_raw_fd(), 1000, 0);
    // More bytes than the read asked for.
    assert!(matches!(
        pool.reap(Cqe::new(1001, f(0, true))),
        Err(Error::BadCompletion(bufring::BadCompletion::TooLong { .. }))
    ));
    // F_BUF_MORE although the selected length (0: the whole buffer) uses it up.
    let _ = pool.read(file.1.as_raw_fd(), 0, 0);
    assert!(matches!(
        pool.reap(Cqe::new(100, f(0, true))),
        Err(Error::BadCompletion(
            bufring::BadCompletion::BufMoreWithoutSpace { bid: 0 }
        ))
    ));
    assert_eq!(pool.cursor(0), Some(0));
    assert_eq!(pool.stats().completions, 0);
    // A short read: 10 bytes, 1000 used.
    let _ = pool.read(file.1.as_raw_fd(), 1000, 0);
    let c = pool.reap_chunk(Cqe::new(10, f(0, true)));
    assert_eq!((c.offset(), c.len()), (0, 10));
    assert_eq!(pool.cursor(0), Some(1000));
}

/// A read of a pipe commits the bytes read, not the length asked for: the builder looks at the
/// file, so the same pool reads pipe completions by their bytes.
#[test]
fn pipe_read_is_not_taken_for_a_file_read() {
    let ring = require_uring!();
    let Some(mut pool) = build(&ring, 10, Incremental::Kernel, 2, 4096) else {
        return;
    };
    let (rx, _tx) = pipe();
    let _ = pool.read(rx.as_raw_fd(), 1000, u64::MAX);
    let f = 1 | (1 << 4);
    let c = pool.reap(Cqe::new(10, f)).unwrap().into_chunks().map(one);
    assert_eq!(c.map(|c| c.len()), Some(10));
    assert_eq!(pool.cursor(0), Some(10));
}

/// A kernel incremental pool that made both regular-file reads (which use up the length asked
/// for) and receives (which use up the bytes) cannot tell its completions apart: it refuses
/// them, typed, rather than guess where the kernel writes next.
#[test]
fn file_reads_and_receives_on_one_kernel_incremental_pool_are_refused() {
    let ring = require_uring!();
    let Some(mut pool) = build(&ring, 11, Incremental::Kernel, 2, 4096) else {
        return;
    };
    let file = TempFile::new("mixed", 100);
    let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let _ = pool.read(file.1.as_raw_fd(), 1000, 0);
    let _ = pool.recv_multishot(sock.as_raw_fd());
    let before = pool.stats();
    assert!(matches!(
        pool.reap(Cqe::new(10, 1 | (1 << 4))),
        Err(Error::BadCompletion(bufring::BadCompletion::MixedFileReads))
    ));
    assert_eq!(pool.cursor(0), Some(0));
    assert_eq!(pool.stats().completions, before.completions);
}
