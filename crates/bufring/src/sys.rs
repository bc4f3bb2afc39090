//! The uapi numbers and structs that the `io-uring` crate does not export, and the raw
//! `io_uring_register` calls built on them (registration with `min_left`, PBUF_STATUS).

use std::io;
use std::os::fd::RawFd;

/// Kernel allocates the ring memory; the application maps it from the ring fd.
pub const IOU_PBUF_RING_MMAP: u16 = 1;
/// Incremental consumption of ring buffers (Linux 6.12).
pub const IOU_PBUF_RING_INC: u16 = 2;

/// CQE flag: a buffer was selected; its bid is in the upper 16 bits.
pub const IORING_CQE_F_BUFFER: u32 = 1 << 0;
/// CQE flag: the multishot request goes on.
pub const IORING_CQE_F_MORE: u32 = 1 << 1;
/// CQE flag: the socket had more data when the request completed.
pub const IORING_CQE_F_SOCK_NONEMPTY: u32 = 1 << 2;
/// CQE flag: a zero-copy send notification.
pub const IORING_CQE_F_NOTIF: u32 = 1 << 3;
/// CQE flag: the kernel keeps filling the same (incremental) buffer.
pub const IORING_CQE_F_BUF_MORE: u32 = 1 << 4;
/// `bid = flags >> IORING_CQE_BUFFER_SHIFT`.
pub const IORING_CQE_BUFFER_SHIFT: u32 = 16;

/// `io_uring_register` opcodes.
pub const IORING_REGISTER_PBUF_RING: u32 = 22;
/// Unregister a buffer ring.
pub const IORING_UNREGISTER_PBUF_RING: u32 = 23;
/// Read the kernel's head of a buffer ring (Linux 6.8).
pub const IORING_REGISTER_PBUF_STATUS: u32 = 26;

/// mmap offset of a kernel-allocated ring: `IORING_OFF_PBUF_RING | bgid << IORING_OFF_PBUF_SHIFT`.
pub const IORING_OFF_PBUF_RING: u64 = 0x8000_0000;
/// Shift of the bgid in the mmap offset.
pub const IORING_OFF_PBUF_SHIFT: u32 = 16;

/// `sqe->ioprio` bits for send/recv.
pub const IORING_RECVSEND_POLL_FIRST: u16 = 1 << 0;
/// Multishot receive.
pub const IORING_RECV_MULTISHOT: u16 = 1 << 1;
/// Bundle receive: one completion may cover several buffers (Linux 6.10).
pub const IORING_RECVSEND_BUNDLE: u16 = 1 << 4;

/// Largest number of entries a buffer ring may have.
pub const MAX_RING_ENTRIES: u32 = 32768;

/// One entry of a buffer ring. The ring's 16-bit tail aliases `bufs[0].resv`, so entries are
/// written field by field, never as a whole.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IoUringBuf {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// Buffer id.
    pub bid: u16,
    /// Reserved; in entry 0 it is the ring tail.
    pub resv: u16,
}

/// Argument of IORING_REGISTER_PBUF_RING.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IoUringBufReg {
    /// Ring address (0 with IOU_PBUF_RING_MMAP).
    pub ring_addr: u64,
    /// Power of two, at most 32768.
    pub ring_entries: u32,
    /// Buffer group id.
    pub bgid: u16,
    /// IOU_PBUF_RING_* flags.
    pub flags: u16,
    /// With INC: retire a buffer when fewer than this many bytes remain.
    pub min_left: u32,
    /// Must be zero.
    pub resv: [u32; 5],
}

/// Argument of IORING_REGISTER_PBUF_STATUS.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IoUringBufStatus {
    /// In: the buffer group.
    pub buf_group: u32,
    /// Out: the kernel's head.
    pub head: u32,
    /// Must be zero.
    pub resv: [u32; 8],
}

const _: () = assert!(std::mem::size_of::<IoUringBuf>() == 16);
const _: () = assert!(std::mem::size_of::<IoUringBufReg>() == 40);
const _: () = assert!(std::mem::size_of::<IoUringBufStatus>() == 40);

/// `io_uring_register(fd, opcode, arg, nr_args)`; errors come back as `io::Error`.
///
/// # Safety
/// `arg` must point to memory that is valid for what `opcode` reads and writes.
pub unsafe fn io_uring_register(
    fd: RawFd,
    opcode: u32,
    arg: *mut libc::c_void,
    nr_args: u32,
) -> io::Result<i32> {
    // SAFETY: the caller vouches for `arg`; the other arguments are plain integers.
    let ret = unsafe { libc::syscall(libc::SYS_io_uring_register, fd, opcode, arg, nr_args) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as i32)
    }
}

/// Registers a buffer ring described by `reg`.
pub fn register_pbuf_ring(fd: RawFd, reg: &IoUringBufReg) -> io::Result<()> {
    let mut reg = *reg;
    // SAFETY: `reg` is a valid io_uring_buf_reg that lives across the call; the kernel only reads
    // it. The ring memory it names is the caller's business (see `ring::BufRing`).
    unsafe {
        io_uring_register(
            fd,
            IORING_REGISTER_PBUF_RING,
            (&mut reg as *mut IoUringBufReg).cast(),
            1,
        )
    }
    .map(drop)
}

/// Unregisters the buffer ring of `bgid`.
pub fn unregister_pbuf_ring(fd: RawFd, bgid: u16) -> io::Result<()> {
    let mut reg = IoUringBufReg {
        bgid,
        ..Default::default()
    };
    // SAFETY: `reg` is a valid io_uring_buf_reg that lives across the call.
    unsafe {
        io_uring_register(
            fd,
            IORING_UNREGISTER_PBUF_RING,
            (&mut reg as *mut IoUringBufReg).cast(),
            1,
        )
    }
    .map(drop)
}

/// The kernel's head of the ring registered under `bgid` (IORING_REGISTER_PBUF_STATUS).
pub fn pbuf_status(fd: RawFd, bgid: u16) -> io::Result<u16> {
    let mut status = IoUringBufStatus {
        buf_group: bgid as u32,
        ..Default::default()
    };
    // SAFETY: `status` is a valid io_uring_buf_status that lives across the call; the kernel
    // writes only its `head` field.
    unsafe {
        io_uring_register(
            fd,
            IORING_REGISTER_PBUF_STATUS,
            (&mut status as *mut IoUringBufStatus).cast(),
            1,
        )
    }?;
    Ok(status.head as u16)
}
