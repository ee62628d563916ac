//! Where the agent's listening sockets come from. In order of preference:
//! passed by systemd (socket activation, read with `listenfd`), handed over
//! by the agent process this one replaces ([`crate::handoff`]), or bound
//! here. Either way the sockets outlive a restart: clients that connect
//! while no process accepts wait in the kernel's backlog instead of being
//! refused.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// What a listening socket is, as named in the config. Also the name a
/// socket travels under in a handoff.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketName {
    /// A TCP listener on this address.
    Tcp(SocketAddr),
    /// A unix stream listener at this path.
    Unix(PathBuf),
}

impl std::fmt::Display for SocketName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketName::Tcp(addr) => write!(f, "tcp {addr}"),
            SocketName::Unix(path) => write!(f, "unix {}", path.display()),
        }
    }
}

/// Listening sockets received from outside, waiting to be claimed by the
/// part of the config that names them.
#[derive(Debug, Default)]
pub struct Inherited {
    tcp: BTreeMap<SocketAddr, TcpListener>,
    unix: BTreeMap<PathBuf, UnixListener>,
    /// Where they came from, for log lines.
    source: &'static str,
}

impl Inherited {
    /// The sockets systemd passed (`LISTEN_FDS`), if any. Descriptors that
    /// are neither TCP nor unix stream listeners are reported and ignored.
    pub fn from_systemd() -> Inherited {
        let mut fds = listenfd::ListenFd::from_env();
        let mut inherited = Inherited { source: "systemd", ..Inherited::default() };
        for index in 0..fds.len() {
            if let Ok(Some(listener)) = fds.take_tcp_listener(index) {
                match listener.local_addr() {
                    Ok(addr) => {
                        inherited.tcp.insert(addr, listener);
                    }
                    Err(e) => tracing::warn!(index, error = %e, "passed TCP socket has no address; ignored"),
                }
            } else if let Ok(Some(listener)) = fds.take_unix_listener(index) {
                match listener.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf)) {
                    Some(path) => {
                        inherited.unix.insert(path, listener);
                    }
                    None => tracing::warn!(index, "passed unix socket has no path; ignored"),
                }
            } else {
                tracing::warn!(index, "passed descriptor is not a TCP or unix stream listener; ignored");
            }
        }
        inherited
    }

    /// Sockets received by name, e.g. from a handoff.
    pub fn from_named(sockets: Vec<(SocketName, OwnedFd)>, source: &'static str) -> Inherited {
        let mut inherited = Inherited { source, ..Inherited::default() };
        for (name, fd) in sockets {
            match name {
                SocketName::Tcp(addr) => {
                    inherited.tcp.insert(addr, TcpListener::from(fd));
                }
                SocketName::Unix(path) => {
                    inherited.unix.insert(path, UnixListener::from(fd));
                }
            }
        }
        inherited
    }

    /// Whether nothing was inherited.
    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.unix.is_empty()
    }

    /// Where the sockets came from (`systemd`, `handoff`).
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// Claim the TCP listener for `addr`: the one bound to exactly that
    /// address, or a dual-stack `[::]` listener on the same port when `addr`
    /// is `0.0.0.0` (what systemd's `ListenStream=PORT` binds).
    pub fn take_tcp(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        if let Some(l) = self.tcp.remove(&addr) {
            return Some(l);
        }
        let dual_stack = self
            .tcp
            .keys()
            .find(|a| addr.ip().is_unspecified() && a.ip().is_unspecified() && a.port() == addr.port())
            .copied()?;
        self.tcp.remove(&dual_stack)
    }

    /// Claim the unix listener at `path`.
    pub fn take_unix(&mut self, path: &Path) -> Option<UnixListener> {
        self.unix.remove(path)
    }

    /// What nobody claimed (the config no longer names it); dropping them
    /// closes them.
    pub fn unclaimed(&self) -> Vec<SocketName> {
        let tcp = self.tcp.keys().map(|a| SocketName::Tcp(*a));
        tcp.chain(self.unix.keys().map(|p| SocketName::Unix(p.clone()))).collect()
    }
}

/// Copies of every listening socket the agent serves, kept to hand them to
/// a successor. A copy shares the socket (and its backlog) with the
/// original; it is not a second socket.
#[derive(Debug, Default)]
pub struct Shareable {
    sockets: Vec<(SocketName, OwnedFd)>,
}

impl Shareable {
    /// Keep a copy of a TCP listener.
    pub fn add_tcp(&mut self, listener: &TcpListener) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        self.sockets.push((SocketName::Tcp(addr), OwnedFd::from(listener.try_clone()?)));
        Ok(())
    }

    /// Keep a copy of a unix listener known by `path`.
    pub fn add_unix(&mut self, path: &Path, listener: &UnixListener) -> std::io::Result<()> {
        self.sockets.push((SocketName::Unix(path.to_path_buf()), OwnedFd::from(listener.try_clone()?)));
        Ok(())
    }

    /// The sockets, by name.
    pub fn sockets(&self) -> &[(SocketName, OwnedFd)] {
        &self.sockets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dual_stack_listener_serves_an_ipv4_wildcard_address() {
        let listener = TcpListener::bind("[::]:0").expect("an IPv6 wildcard listener (is IPv6 disabled?)");
        let port = listener.local_addr().unwrap().port();
        let mut inherited = Inherited::from_named(vec![], "test");
        inherited.tcp.insert(listener.local_addr().unwrap(), listener);
        assert!(inherited.take_tcp(format!("127.0.0.1:{port}").parse().unwrap()).is_none());
        assert!(inherited.take_tcp(format!("0.0.0.0:{port}").parse().unwrap()).is_some());
        assert!(inherited.is_empty());
    }

    #[test]
    fn named_sockets_are_claimed_by_exact_name() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let unix = UnixListener::bind(&path).unwrap();
        let mut inherited = Inherited::from_named(
            vec![(SocketName::Tcp(addr), tcp.into()), (SocketName::Unix(path.clone()), unix.into())],
            "test",
        );
        assert_eq!(inherited.unclaimed().len(), 2);
        assert!(inherited.take_unix(&dir.path().join("other.sock")).is_none());
        assert!(inherited.take_unix(&path).is_some());
        assert!(inherited.take_tcp(addr).is_some());
        assert!(inherited.unclaimed().is_empty());
    }
}
