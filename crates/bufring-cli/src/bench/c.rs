//! The hand-written liburing contenders (csrc/contenders.c), present when the build found
//! <liburing.h>. Without it every entry point says why it is missing.

#[cfg(have_liburing)]
mod ffi {
    use std::os::raw::{c_int, c_uint};

    #[repr(C)]
    pub struct Stream {
        _private: [u8; 0],
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct StreamResult {
        pub bytes: u64,
        pub completions: u64,
        pub enobufs: u64,
        pub err: i32,
    }

    extern "C" {
        pub fn br_c_stream_setup(
            fds: *const c_int,
            nfds: c_int,
            buf_len: c_uint,
            count: c_uint,
            incremental: c_int,
            err: *mut i32,
        ) -> *mut Stream;
        pub fn br_c_stream_run(s: *mut Stream, timeout_ms: c_int, out: *mut StreamResult);
        pub fn br_c_stream_free(s: *mut Stream);
        pub fn br_c_hotpath(
            count: c_uint,
            buf_len: c_uint,
            pieces: c_uint,
            n: u64,
            batch: c_uint,
            sink: *mut u64,
        ) -> u64;
    }
}

/// Why the C contenders are missing, or `None` when they are built in.
pub fn missing() -> Option<&'static str> {
    if cfg!(have_liburing) {
        None
    } else {
        Some("skipped: built without <liburing.h> (install liburing-dev and rebuild)")
    }
}

/// What a C stream receive reports.
#[derive(Debug, Default)]
pub struct StreamOut {
    pub bytes: u64,
    /// Completions that brought data.
    pub ops: u64,
    pub enobufs: u64,
}

/// A set-up C receiver: ring, buffer ring and one multishot recv per socket, not yet submitted.
pub struct CStream {
    #[cfg(have_liburing)]
    ptr: *mut ffi::Stream,
    // The C side keeps a pointer to the fd array.
    _fds: Box<[i32]>,
}

impl CStream {
    #[cfg_attr(not(have_liburing), allow(unused_variables))]
    pub fn setup(
        fds: &[i32],
        buf_len: u32,
        count: u32,
        incremental: bool,
    ) -> std::io::Result<CStream> {
        let fds: Box<[i32]> = fds.into();
        #[cfg(have_liburing)]
        {
            let mut err = 0i32;
            // SAFETY: `fds` lives in the returned value as long as the C side uses it; `err` is
            // ours to write.
            let ptr = unsafe {
                ffi::br_c_stream_setup(
                    fds.as_ptr(),
                    fds.len() as i32,
                    buf_len,
                    count,
                    incremental as i32,
                    &mut err,
                )
            };
            if ptr.is_null() {
                return Err(std::io::Error::from_raw_os_error(-err));
            }
            Ok(CStream { ptr, _fds: fds })
        }
        #[cfg(not(have_liburing))]
        {
            let _ = fds;
            Err(std::io::Error::other(missing().unwrap_or_default()))
        }
    }

    /// Receives until every socket ended (or the timeout).
    #[cfg_attr(not(have_liburing), allow(unused_variables))]
    pub fn run(&mut self, timeout_ms: i32) -> std::io::Result<StreamOut> {
        #[cfg(have_liburing)]
        {
            let mut out = ffi::StreamResult::default();
            // SAFETY: `ptr` came from setup and is freed only in Drop.
            unsafe { ffi::br_c_stream_run(self.ptr, timeout_ms, &mut out) };
            if out.err != 0 {
                return Err(std::io::Error::from_raw_os_error(-out.err));
            }
            Ok(StreamOut {
                bytes: out.bytes,
                ops: out.completions,
                enobufs: out.enobufs,
            })
        }
        #[cfg(not(have_liburing))]
        Err(std::io::Error::other(missing().unwrap_or_default()))
    }
}

impl Drop for CStream {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from setup and is freed exactly once, here.
        #[cfg(have_liburing)]
        unsafe {
            ffi::br_c_stream_free(self.ptr)
        };
    }
}

/// The C hot-path loop: nanoseconds for `n` completions and the bytes it counted.
#[cfg_attr(not(have_liburing), allow(unused_variables))]
pub fn hotpath(count: u32, buf_len: u32, pieces: u32, n: u64, batch: u32) -> Option<(u64, u64)> {
    #[cfg(have_liburing)]
    {
        let mut sink = 0u64;
        // SAFETY: plain values in, one u64 out.
        let ns = unsafe { ffi::br_c_hotpath(count, buf_len, pieces, n, batch, &mut sink) };
        Some((ns, sink))
    }
    #[cfg(not(have_liburing))]
    None
}
