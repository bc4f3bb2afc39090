//! A UDP receiver: one recvmsg multishot on a pool delivers every datagram with its source
//! address, without copying the payload.
//!
//! `cargo run -p bufring --example udp_recv` binds 127.0.0.1, sends itself 1000 datagrams of
//! varying sizes from two sockets, checks each one (payload and source) and exits.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bufring::{Completion, Pool, RecvMsg};
use io_uring::{types, IoUring};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const DATAGRAMS: u32 = 1000;
const RECV: u64 = 1;
const PROVIDE: u64 = 2;

fn main() -> Result<()> {
    let Ok(mut ring) = IoUring::new(256) else {
        eprintln!("io_uring is unavailable here: nothing to show");
        return Ok(());
    };
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    // A classic pool: one datagram per buffer (an incremental pool needs `min_left`, see
    // `RecvMsg::check_pool`).
    let mut pool = Pool::builder(0).count(64).buf_len(2048).build(&ring)?;
    // Room for an IPv4 or IPv6 source, no control messages.
    let msg = RecvMsg::new(RecvMsg::INET6_NAME_LEN, 0)?;
    let arm = |ring: &mut IoUring, pool: &mut Pool| -> Result<()> {
        // A pool on legacy provided buffers (kernels before 5.19) hands its buffers to the
        // kernel through SQEs; on a buffer ring there are none.
        pool.provide(|sqe| {
            // SAFETY: the SQE gives the kernel buffers of `pool`, which outlives the loop.
            unsafe { ring.submission().push(&sqe.user_data(PROVIDE)) }.is_ok()
        });
        let e = msg.multishot(pool, sock.as_raw_fd())?.user_data(RECV);
        // SAFETY: `pool` and `msg` outlive the loop below, and the request ends before it.
        unsafe { ring.submission().push(&e)? };
        Ok(())
    };
    arm(&mut ring, &mut pool)?;

    let senders = [
        UdpSocket::bind("127.0.0.1:0")?,
        UdpSocket::bind("127.0.0.1:0")?,
    ];
    let (mut sent, mut got) = (0u32, 0u32);
    let mut from = [0u32; 2];
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < DATAGRAMS {
        if Instant::now() > deadline {
            return Err(format!("{got} of {DATAGRAMS} datagrams in 30 s").into());
        }
        // Keep a few datagrams in flight (UDP drops what no buffer can take).
        while sent < DATAGRAMS && sent < got + 32 {
            let s = &senders[sent as usize % 2];
            s.send_to(&payload(sent), sock.local_addr()?)?;
            sent += 1;
        }
        let ts = types::Timespec::new().nsec(100_000_000);
        let args = types::SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
            Err(e) => return Err(e.into()),
        }
        let cqes: Vec<_> = ring.completion().collect();
        let mut rearm = false;
        for cqe in cqes {
            if cqe.user_data() == PROVIDE {
                if cqe.result() < 0 {
                    return Err(std::io::Error::from_raw_os_error(-cqe.result()).into());
                }
                continue;
            }
            // SAFETY: the ring's only receive is the recvmsg multishot on `pool`; each CQE is
            // handed over once.
            let completion = unsafe { pool.complete(&cqe)? };
            rearm |= completion.must_rearm();
            match completion {
                Completion::Data { chunks, .. } => {
                    for chunk in chunks {
                        let d = msg.parse(chunk)?;
                        let src = d.source().ok_or("no source address")?;
                        let k = senders
                            .iter()
                            .position(|s| s.local_addr().ok() == Some(src))
                            .ok_or("datagram from a stranger")?;
                        let seq = u32::from_le_bytes(d.payload()[..4].try_into()?);
                        if d.payload()[..] != payload(seq)[..] {
                            return Err(format!("datagram {seq} is damaged").into());
                        }
                        from[k] += 1;
                        got += 1;
                    }
                }
                Completion::NoBuffers => {}
                Completion::EndOfStream => return Err("a UDP socket has no end".into()),
                Completion::Failed(e) => return Err(e.into()),
            }
        }
        pool.publish();
        if rearm {
            arm(&mut ring, &mut pool)?;
        } else {
            pool.provide(|sqe| {
                // SAFETY: as in `arm`.
                unsafe { ring.submission().push(&sqe.user_data(PROVIDE)) }.is_ok()
            });
        }
    }
    println!(
        "{got} datagrams, {} and {} from the two senders, {} buffers in the pool",
        from[0],
        from[1],
        pool.count()
    );
    Ok(())
}

/// Datagram `seq`: its number, then bytes that depend on it; 4 to 1400 bytes long.
fn payload(seq: u32) -> Vec<u8> {
    let len = 4 + (seq as usize * 37) % 1397;
    let mut p = seq.to_le_bytes().to_vec();
    p.extend((4..len).map(|k| (k as u32 ^ seq) as u8));
    p
}
