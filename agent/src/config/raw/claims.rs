//! Which listening addresses the config has handed out, and whether a new
//! one could be bound beside them. Two sockets clash when the kernel would
//! refuse the second bind: the same port and the same address, or the same
//! port where one of them is a wildcard (`0.0.0.0`, `[::]`) that covers the
//! other. `[::]` covers IPv4 too (Linux's default `bindv6only = 0`). Port 0
//! asks the kernel for a free port and never clashes.

use std::net::{IpAddr, SocketAddr};

/// Addresses claimed so far, each with the config key that claimed it.
#[derive(Debug, Default)]
pub(super) struct Claims {
    taken: Vec<(SocketAddr, String)>,
}

impl Claims {
    /// Claim `addr` for `key`; on a clash, the address and key it clashes
    /// with.
    pub fn claim(&mut self, addr: SocketAddr, key: impl Into<String>) -> Result<(), (SocketAddr, String)> {
        if let Some((other, by)) = self.taken.iter().find(|(other, _)| clash(*other, addr)) {
            return Err((*other, by.clone()));
        }
        self.taken.push((addr, key.into()));
        Ok(())
    }
}

/// Whether binding `b` fails while `a` is bound.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || b.port() == 0 || a.port() != b.port() {
        return false;
    }
    a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip())
}

/// Whether a socket bound to wildcard `w` takes the port for `ip` as well.
fn covers(w: IpAddr, ip: IpAddr) -> bool {
    match (w, ip) {
        (IpAddr::V4(w), IpAddr::V4(_)) => w.is_unspecified(),
        (IpAddr::V6(w), _) => w.is_unspecified(),
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn wildcards_cover_their_family_and_v6_covers_v4() {
        for (x, y) in [
            ("0.0.0.0:80", "127.0.0.1:80"),
            ("127.0.0.1:80", "0.0.0.0:80"),
            ("127.0.0.1:80", "127.0.0.1:80"),
            ("[::]:80", "127.0.0.1:80"),
            ("0.0.0.0:80", "[::]:80"),
            ("[::]:80", "[::1]:80"),
        ] {
            let mut c = Claims::default();
            c.claim(a(x), "first").unwrap();
            assert_eq!(c.claim(a(y), "second"), Err((a(x), "first".into())), "{x} then {y}");
        }
        for (x, y) in [
            ("0.0.0.0:80", "127.0.0.1:81"),
            ("127.0.0.1:80", "127.0.0.2:80"),
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("0.0.0.0:80", "[::1]:80"),
        ] {
            let mut c = Claims::default();
            c.claim(a(x), "first").unwrap();
            assert!(c.claim(a(y), "second").is_ok(), "{x} then {y}");
        }
    }
}
