//! RecvStream on real TCP connections: chunks come out in order, and on incremental pools a
//! connection's consecutive receives merge into one chunk per buffer.

mod common;

use std::io::Write;
use std::time::Duration;

use bufring::{Incremental, Pool, RecvStream};
use common::{Checker, Pattern};

/// Sends `total` pattern bytes in writes of up to `max_write`, pausing now and then so the
/// receiver sees many separate completions.
fn send_slowly(mut s: std::net::TcpStream, total: usize, max_write: usize, seed: u64) {
    let mut data = Pattern::new(seed);
    let mut sizes = Pattern::new(seed ^ 0x5555);
    let mut buf = vec![0u8; max_write];
    let mut sent = 0;
    let mut writes = 0;
    while sent < total {
        let n = (1 + sizes.next_u64() as usize % max_write).min(total - sent);
        data.fill(&mut buf[..n]);
        s.write_all(&buf[..n]).unwrap();
        sent += n;
        writes += 1;
        if writes % 8 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Receives the whole stream into a RecvStream, holding every chunk until the end.
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
    let (rx, tx) = common::tcp_pair();
    let total = 100_000;
    let sender = std::thread::spawn(move || send_slowly(tx, total, 1500, 7));
    let mut stream = RecvStream::new();
    common::receive_stream(
        &mut ring,
        &mut pool,
        &rx,
        Duration::from_secs(20),
        |_, chunk| stream.push(chunk),
    );
    stream.finish();
    sender.join().unwrap();
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
