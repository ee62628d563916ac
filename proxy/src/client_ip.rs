//! The client's IP as the `HeaderValue` of `X-Forwarded-For`, formatted
//! without `fmt` for IPv4 and reused while the same client (or the load
//! balancer in front) keeps connecting.

use http::HeaderValue;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

/// Formats client IPs and remembers the last one.
#[derive(Default)]
pub(crate) struct ClientIps {
    last: Option<(IpAddr, HeaderValue)>,
}

impl ClientIps {
    /// The header value for `ip`: a cheap clone when it is the last one.
    pub(crate) fn get(&mut self, ip: IpAddr) -> HeaderValue {
        if let Some((last, value)) = &self.last {
            if *last == ip {
                return value.clone();
            }
        }
        let value = format(ip);
        self.last = Some((ip, value.clone()));
        value
    }
}

/// `ip` as a header value.
fn format(ip: IpAddr) -> HeaderValue {
    // The longest IPv6 text is 45 bytes (`ffff:...:255.255.255.255`).
    let mut buf = [0u8; 48];
    let len = match ip {
        IpAddr::V4(v4) => format_v4(v4, &mut buf),
        IpAddr::V6(v6) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{v6}");
            cursor.position() as usize
        }
    };
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Write `ip` in dotted decimal to `out`; returns the length.
fn format_v4(ip: Ipv4Addr, out: &mut [u8]) -> usize {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            out[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            out[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        out[len] = b'0' + octet % 10;
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_format_as_std_does() {
        let ips: [IpAddr; 7] = [
            "127.0.0.1".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            "255.255.255.255".parse().unwrap(),
            "10.20.100.9".parse().unwrap(),
            "::1".parse().unwrap(),
            "::ffff:192.168.1.10".parse().unwrap(),
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
        ];
        for ip in ips {
            assert_eq!(format(ip).to_str().unwrap(), ip.to_string());
        }
    }

    #[test]
    fn the_last_ip_is_reused_and_another_one_formatted() {
        let mut ips = ClientIps::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(ips.get(a), "10.0.0.1");
        assert_eq!(ips.get(a), "10.0.0.1");
        assert_eq!(ips.get(b), "10.0.0.2");
        assert_eq!(ips.get(a), "10.0.0.1");
    }
}
