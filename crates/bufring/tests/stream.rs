//! RecvStream on real TCP connections: chunks come out in order, and on incremental pools a
//! connection's consecutive receives merge into one chunk per buffer.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bufring::Cqe;
use bufring::{Incremental, Pool, RecvStream};
#[allow(unused_imports)]
use common::{one, Reap};
use common::{Checker, Pattern};

/// Receives `total` pattern bytes, written in pieces of up to `max_write` bytes, into a
/// RecvStream that holds every chunk until the end. Sender and receiver take turns (each
/// piece is received before the next is written), so every piece is its own completion.
fn hold_everything(mode: Incremental) -> Option<(RecvStream, u64)> {
    let mut ring = common::uring(64)?;
    // Chunks are held to the end: a classic pool needs a buffer per receive.
    let (count, buf_len) = match mode {
        Incremental::Off => (1024, 4096),
        _ => (4, 64 * 1024),
    };
    let mut pool = match Pool::builder(20)
        .count(count)
        .buf_len(buf_len)
        .incremental(mode)
        .build(&ring)
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            return None;
        }
    };
    let (rx, mut tx) = common::tcp_pair();
    let (total, max_write) = (100_000, 1500);
    let mut data = Pattern::new(7);
    let mut sizes = Pattern::new(7 ^ 0x5555);
    let mut buf = vec![0u8; max_write];
    let mut stream = RecvStream::new();
    common::push(&mut ring, &pool.recv_multishot(rx.as_raw_fd()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    while sent < total {
        let n = (1 + sizes.next_u64() as usize % max_write).min(total - sent);
        data.fill(&mut buf[..n]);
        tx.write_all(&buf[..n]).unwrap();
        sent += n;
        while stream.len() < sent {
            assert!(
                Instant::now() < deadline,
                "{} of {sent} bytes",
                stream.len()
            );
            for (_, res, flags) in common::reap(&mut ring, Duration::from_millis(100)) {
                let c = pool
                    .reap(Cqe::new(res, flags))
                    .expect("completion rejected");
                assert!(c.more(), "multishot ended: {c:?}");
                assert!(stream.push_completion(c).is_none());
            }
        }
    }
    stream.finish();
    assert_eq!(stream.len(), total);
    let completions = pool.stats().completions;
    // Everything arrived in order.
    let mut check = Checker::new(7);
    for c in stream.chunks() {
        check.check(c);
    }
    assert_eq!(check.received, total);
    Some((stream, completions))
}

#[test]
fn incremental_receives_merge_into_one_chunk_per_buffer() {
    let Some((mut stream, completions)) = hold_everything(Incremental::Kernel) else {
        return;
    };
    // 100 000 bytes fill two 64 KiB buffers: however many receives, two chunks remain.
    let bids: Vec<u16> = stream.chunks().map(|c| c.bid()).collect();
    assert_eq!(bids.len(), 2, "chunks per buffer: {bids:?}");
    assert_ne!(bids[0], bids[1]);
    assert_eq!(stream.merges() + 2, completions);
    assert!(
        completions > 10,
        "only {completions} completions: nothing to merge"
    );
    let first = stream.pop().unwrap();
    assert_eq!((first.offset(), first.len()), (0, 64 * 1024));
    assert!(first.is_last());
    eprintln!("{completions} receives merged into 2 chunks");
}

#[test]
fn classic_receives_stay_separate_chunks_in_order() {
    let Some((stream, completions)) = hold_everything(Incremental::Off) else {
        return;
    };
    assert_eq!(stream.merges(), 0);
    assert_eq!(stream.chunks().len() as u64, completions);
    assert!(stream.chunks().all(|c| c.offset() == 0));
}
