//! Messages to the user on stderr, written with plain `write(2)` so they are safe anywhere.

/// Writes `msg` to stderr (best effort).
pub fn stderr(msg: &[u8]) {
    // SAFETY: write(2) from a valid buffer of `msg.len()` bytes.
    unsafe { libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len()) };
}

/// Writes `msg` and aborts the process: for states the shim cannot continue from.
pub fn fatal(msg: &[u8]) -> ! {
    stderr(msg);
    std::process::abort()
}
