//! Hosts with their own addresses for fleet tests: network namespaces made
//! with iproute2, each joined to a bridge in the test's namespace by a
//! veth pair, on a private /24 that exists only here. A host is cut off by
//! setting its link down, slowed with `tc netem`. Everything is removed on
//! drop, also when the test fails.
//!
//! Needs root and `ip` (Debian's iproute2; `tc` for latency). With
//! `BG_DOCKER_TESTS=1` (CI) a missing part fails the test; without it the
//! test says why it does not run.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

static NEXT: AtomicU8 = AtomicU8::new(0);

/// Whether `ip` is in the range [`Net::create`] gives test namespaces
/// (`10.200.0.0` to `10.249.255.255`).
pub fn is_test_address(ip: std::net::IpAddr) -> bool {
    matches!(ip, std::net::IpAddr::V4(v4) if v4.octets()[0] == 10 && (200..250).contains(&v4.octets()[1]))
}

/// Whether namespaces can be made here; panics when they are required.
pub fn available(test: &str) -> bool {
    let required = std::env::var("BG_DOCKER_TESTS").is_ok_and(|v| v == "1");
    let probe = format!("bgprobe{}", std::process::id() % 100_000);
    let ok = Command::new("ip").args(["netns", "add", &probe]).status().is_ok_and(|s| s.success());
    if ok {
        let _ = Command::new("ip").args(["netns", "del", &probe]).status();
        return true;
    }
    assert!(
        !required,
        "{test}: BG_DOCKER_TESTS=1 but network namespaces cannot be made (needs root and iproute2)"
    );
    eprintln!("{test}: not run: cannot make network namespaces (needs root and iproute2)");
    false
}

/// Run `ip`/`tc` with `args`; panics with its stderr on failure.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// One namespace: a host of the fleet.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name.
    pub ns: String,
    /// Its address on the bridge.
    pub addr: Ipv4Addr,
    /// The host side of its veth pair (on the bridge).
    link: String,
}

/// A bridge and its namespaces.
pub struct Net {
    bridge: String,
    /// The hosts, in order.
    pub hosts: Vec<Host>,
}

impl Net {
    /// A bridge with `n` namespaces on `10.(200+k).(id).0/24`: the bridge
    /// is `.1`, host `i` is `.(10+i)`.
    pub fn create(n: usize) -> Net {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{id}", std::process::id() % 10_000);
        let net = (200 + (std::process::id() % 50) as u8, id);
        let bridge = format!("bgbr{tag}");
        let mut me = Net { bridge: bridge.clone(), hosts: Vec::new() };
        run("ip", &["link", "add", &bridge, "type", "bridge"]);
        run("ip", &["addr", "add", &format!("10.{}.{}.1/24", net.0, net.1), "dev", &bridge]);
        run("ip", &["link", "set", &bridge, "up"]);
        for i in 0..n {
            let ns = format!("bgns{tag}-{i}");
            let link = format!("bgv{tag}h{i}");
            let peer = format!("bgv{tag}n{i}");
            let addr = Ipv4Addr::new(10, net.0, net.1, 10 + i as u8);
            run("ip", &["netns", "add", &ns]);
            me.hosts.push(Host { ns: ns.clone(), addr, link: link.clone() });
            run("ip", &["link", "add", &link, "type", "veth", "peer", "name", &peer]);
            run("ip", &["link", "set", &peer, "netns", &ns]);
            run("ip", &["link", "set", &link, "master", &bridge, "up"]);
            run("ip", &["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &peer]);
            run("ip", &["-n", &ns, "link", "set", &peer, "up"]);
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        me
    }

    /// Cut host `i` off: its link goes down.
    pub fn cut(&self, i: usize) {
        run("ip", &["link", "set", &self.hosts[i].link, "down"]);
    }

    /// Bring host `i`'s link back.
    pub fn restore(&self, i: usize) {
        run("ip", &["link", "set", &self.hosts[i].link, "up"]);
    }

    /// Add `ms` of latency to everything sent to host `i`.
    pub fn delay(&self, i: usize, ms: u32) {
        run(
            "tc",
            &["qdisc", "add", "dev", &self.hosts[i].link, "root", "netem", "delay", &format!("{ms}ms")],
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            // Deleting the namespace deletes its end of the veth pair, and
            // with it the other end.
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
            let _ = Command::new("ip").args(["link", "del", &h.link]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}
