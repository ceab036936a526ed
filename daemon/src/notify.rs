//! The systemd readiness protocol (`sd_notify`): tells the service manager when the daemon is
//! ready (its sockets exist), when it is stopping, and a one-line status for `systemctl status`.
//!
//! Messages are datagrams sent to the socket named by `$NOTIFY_SOCKET` (a filesystem path, or an
//! abstract-namespace address written with a leading `@`). Without that variable — the daemon
//! was not started by systemd with `Type=notify` — every call is a no-op. A failure to notify is
//! logged and otherwise ignored: it must never take the daemon down.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use thiserror::Error;

/// The environment variable systemd sets for `Type=notify` services.
pub const ENV_NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A notification could not be delivered.
#[derive(Debug, Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` is set but is neither an absolute path nor an `@abstract` name.
    #[error("{ENV_NOTIFY_SOCKET}={0:?} is neither an absolute path nor an @abstract socket name")]
    BadAddress(String),
    /// The datagram could not be sent.
    /// (The I/O error is part of the message, not a `source()`: these errors are only logged.)
    #[error("sending to {ENV_NOTIFY_SOCKET} {addr:?}: {cause}")]
    Send { addr: String, cause: io::Error },
}

/// Tells systemd the daemon is ready: call once its sockets exist and it is about to serve.
pub fn ready() {
    report("READY=1\nSTATUS=serving");
}

/// Tells systemd the daemon is shutting down.
pub fn stopping() {
    report("STOPPING=1\nSTATUS=stopping");
}

/// Sets the one-line status shown by `systemctl status gpumuxd`.
pub fn status(text: &str) {
    // A newline would start another assignment: keep the status to one line.
    let line: String = text
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    report(&format!("STATUS={line}"));
}

fn report(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!("systemd notification failed: {e}");
    }
}

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to `$NOTIFY_SOCKET`.
/// Returns `Ok(false)` when the variable is unset or empty (not under systemd).
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var_os(ENV_NOTIFY_SOCKET) {
        Some(addr) if !addr.is_empty() => notify_to(&addr, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the notification socket `addr` (a path, or `@name` for the abstract
/// namespace).
pub fn notify_to(addr: &OsStr, state: &str) -> Result<(), NotifyError> {
    let shown = || addr.to_string_lossy().into_owned();
    let sock_addr = socket_addr(addr).ok_or_else(|| NotifyError::BadAddress(shown()))?;
    let send = || -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let sent = sock.send_to_addr(state.as_bytes(), &sock_addr)?;
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "notification truncated",
            ));
        }
        Ok(())
    };
    send().map_err(|cause| NotifyError::Send {
        addr: shown(),
        cause,
    })
}

fn socket_addr(addr: &OsStr) -> Option<SocketAddr> {
    let bytes = addr.as_bytes();
    match bytes.first()? {
        b'@' => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..]).ok()
        }
        b'/' => SocketAddr::from_pathname(std::path::Path::new(addr)).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("gpumux-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        std::fs::remove_file(&path).ok();
        let server = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1\nSTATUS=serving").unwrap();
        assert_eq!(recv(&server), "READY=1\nSTATUS=serving");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("gpumux-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        assert_eq!(recv(&server), "STOPPING=1");
    }

    #[test]
    fn rejects_bad_addresses_and_reports_send_errors() {
        assert!(matches!(
            notify_to(OsStr::new("relative.sock"), "READY=1"),
            Err(NotifyError::BadAddress(_))
        ));
        assert!(matches!(
            notify_to(OsStr::new(""), "READY=1"),
            Err(NotifyError::BadAddress(_))
        ));
        let err = notify_to(OsStr::new("/nonexistent/gpumux/notify.sock"), "READY=1").unwrap_err();
        assert!(matches!(err, NotifyError::Send { .. }), "{err}");
    }
}
