//! Readiness notification for a service manager (systemd `Type=notify`,
//! sd_notify(3)): `READY=1` once the API listens, `STOPPING=1` when
//! shutdown begins, each a datagram to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Without
//! that variable, as outside systemd, nothing is sent.
//!
//! A few lines over std's `UnixDatagram` rather than a crate: the protocol
//! is one datagram of `KEY=value` lines, and nothing else of libsystemd
//! (watchdog, file descriptor store, socket activation) is used.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=value` assignments) to the service
/// manager, if one asked for notifications. A failure is logged, never
/// fatal: the service manager then times the start out by itself.
pub(crate) fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&socket, state) {
        tracing::warn!(error = %e, socket = ?socket, state, "could not notify the service manager");
    }
}

fn send(socket: &OsStr, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let name = socket.as_bytes();
    let sent = match name.first() {
        Some(b'/') => sock.send_to(state.as_bytes(), socket)?,
        #[cfg(target_os = "linux")]
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name[1..])?;
            sock.send_to_addr(state.as_bytes(), &addr)?
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor an abstract socket (@name)",
            ));
        }
    };
    if sent != state.len() {
        return Err(io::Error::other("the notification was truncated"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_is_one_datagram_to_the_named_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1\nSTATUS=listening").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=listening");

        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("orgkey-notify-test-{}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            let server = UnixDatagram::bind_addr(&addr).unwrap();
            send(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
            let n = server.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"STOPPING=1");
        }

        for bad in ["relative/path", "", "vsock:2:1234"] {
            assert_eq!(
                send(OsStr::new(bad), "READY=1").unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad}"
            );
        }
    }
}
