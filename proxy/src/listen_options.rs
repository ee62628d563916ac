//! Socket options set once on a listener, which every socket it accepts
//! inherits (Linux copies them on accept): one system call per listener
//! instead of one per connection.
//!
//! - `TCP_NODELAY`: answers go out as soon as they are written.
//! - Quick ACKs off: the ACK of a new connection's first request rides on
//!   the answer instead of going out as a packet of its own (HAProxy's
//!   `tcp-smart-accept`). A client with Nagle on that writes one request
//!   in two pieces waits up to a delayed-ACK interval for the second, as
//!   it does on any keep-alive connection after the first answer.
//! - `TCP_DEFER_ACCEPT`: a connection is handed to accept only once its
//!   first bytes are there (nginx's `deferred`, HAProxy's `defer-accept`),
//!   so its first read finds them: no empty read, no poller registration
//!   (two `epoll_ctl`) and no wake-up for the bytes alone. A client that
//!   sends nothing is accepted after [`DEFER_ACCEPT_SECS`] anyway, and the
//!   header read timeout then applies as before.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;

/// How long the kernel holds a connection that has sent nothing before
/// handing it to accept regardless.
pub(crate) const DEFER_ACCEPT_SECS: i32 = 1;

/// Set the options accepted sockets inherit on `listener`.
pub(crate) fn set(listener: &TcpListener) -> io::Result<()> {
    rustix::net::sockopt::set_tcp_nodelay(listener, true)?;
    rustix::net::sockopt::set_tcp_quickack(listener, false)?;
    set_defer_accept(listener, DEFER_ACCEPT_SECS)
}

/// `TCP_DEFER_ACCEPT`, which rustix, nix and socket2 do not expose.
#[allow(unsafe_code)]
fn set_defer_accept(listener: &TcpListener, secs: i32) -> io::Result<()> {
    let value: libc::c_int = secs;
    // SAFETY: the descriptor is open for as long as `listener` is
    // borrowed, and the option value is a `c_int` whose address and size
    // are passed together; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&value).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::sockopt::{tcp_nodelay, tcp_quickack};
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    fn listener() -> TcpListener {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        set(&l).expect("listener options");
        l
    }

    #[test]
    fn accepted_sockets_inherit_no_delay_and_delayed_acks() {
        let l = listener();
        let mut client = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        let (stream, _) = l.accept().expect("accept");
        assert!(tcp_nodelay(&stream).expect("TCP_NODELAY"), "TCP_NODELAY not inherited");
        assert!(!tcp_quickack(&stream).expect("TCP_QUICKACK"), "quick ACKs still on");
    }

    #[test]
    fn a_connection_is_accepted_with_its_first_bytes_already_there() {
        let l = listener();
        l.set_nonblocking(true).expect("non-blocking");
        let mut client = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        // Connected, nothing sent: not handed to accept yet.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(l.accept().map(|_| ()).map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
        client.write_all(b"ping").expect("write");
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut stream, _) = loop {
            match l.accept() {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(true).expect("non-blocking");
        let mut buf = [0u8; 8];
        assert_eq!(stream.read(&mut buf).expect("the bytes are there at accept"), 4);
    }

    #[test]
    fn a_silent_client_is_accepted_after_the_deferral() {
        let l = listener();
        let _client = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let started = Instant::now();
        l.set_nonblocking(false).expect("blocking");
        let (_stream, _) = l.accept().expect("accepted without data");
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(10), "held for {waited:?}");
    }
}
