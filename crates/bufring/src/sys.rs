//! The uapi numbers and structs that the `io-uring` crate does not export, and the raw
//! `io_uring_register` calls built on them (registration with `min_left`, PBUF_STATUS).
//! Private: users reach the kernel through `BufRing` and `Pool`.

use std::io;
use std::os::fd::RawFd;

/// `io_uring_register` opcodes.
pub(crate) const IORING_REGISTER_PBUF_RING: u32 = 22;
/// Unregister a buffer ring.
pub(crate) const IORING_UNREGISTER_PBUF_RING: u32 = 23;
/// Read the kernel's head of a buffer ring (Linux 6.8).
pub(crate) const IORING_REGISTER_PBUF_STATUS: u32 = 26;

/// mmap offset of a kernel-allocated ring: `IORING_OFF_PBUF_RING | bgid << IORING_OFF_PBUF_SHIFT`.
pub(crate) const IORING_OFF_PBUF_RING: u64 = 0x8000_0000;
/// Shift of the bgid in the mmap offset.
pub(crate) const IORING_OFF_PBUF_SHIFT: u32 = 16;

/// Largest number of entries a buffer ring may have.
pub(crate) const MAX_RING_ENTRIES: u32 = 32768;

/// One entry of a buffer ring. The ring's 16-bit tail aliases `bufs[0].resv`, so entries are
/// written field by field, never as a whole.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IoUringBuf {
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
pub(crate) struct IoUringBufReg {
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
pub(crate) struct IoUringBufStatus {
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
pub(crate) unsafe fn io_uring_register(
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
///
/// # Safety
/// `reg.ring_addr` (unless 0 with IOU_PBUF_RING_MMAP) must be page-aligned memory of
/// `ring_entries` entries that stays mapped, and is written only as a buffer ring, until the
/// ring is unregistered: the kernel reads the entries and writes into the buffers they name.
pub(crate) unsafe fn register_pbuf_ring(fd: RawFd, reg: &IoUringBufReg) -> io::Result<()> {
    let mut reg = *reg;
    // SAFETY: `reg` is a valid io_uring_buf_reg that lives across the call; the kernel only reads
    // it. The ring memory it names is the caller's promise.
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
pub(crate) fn unregister_pbuf_ring(fd: RawFd, bgid: u16) -> io::Result<()> {
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
pub(crate) fn pbuf_status(fd: RawFd, bgid: u16) -> io::Result<u16> {
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
