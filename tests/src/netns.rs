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
    let probe = format!("bgprobe{}-{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed));
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

    /// Add `ms` of latency to everything sent to host `i`'s `port`: with
    /// `tc netem` on its link when the kernel has netem (`None`: use the
    /// host's own address), else through a relay on loopback that holds
    /// every chunk sent towards the host for `ms` (`Some`: connect there).
    pub async fn delay(&self, i: usize, port: u16, ms: u32) -> Option<DelayRelay> {
        let out = Command::new("tc")
            .args(["qdisc", "add", "dev", &self.hosts[i].link, "root", "netem", "delay", &format!("{ms}ms")])
            .output()
            .expect("tc (Debian package iproute2) must be installed");
        if out.status.success() {
            return None;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("qdisc kind is unknown"), "tc netem: {err}");
        eprintln!("this kernel has no netem: {ms} ms of latency through a relay instead");
        let target = std::net::SocketAddr::from((self.hosts[i].addr, port));
        Some(DelayRelay::start(target, std::time::Duration::from_millis(u64::from(ms))).await)
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

/// A TCP relay on loopback that delivers what clients send to `target`
/// `delay` late (answers come back at once): a slow link in user space for
/// kernels without netem. Stops on drop.
pub struct DelayRelay {
    /// Where to connect instead of the target.
    pub addr: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
}

impl DelayRelay {
    async fn start(target: std::net::SocketAddr, delay: std::time::Duration) -> DelayRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let addr = listener.local_addr().expect("relay address");
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(upstream) = tokio::net::TcpStream::connect(target).await else { return };
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = upstream.into_split();
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = pump(cr, uw, delay) => {}
                        _ = pump(ur, cw, std::time::Duration::ZERO) => {}
                    }
                });
            }
        });
        DelayRelay { addr, stop }
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copy `from` to `to`, each chunk delivered `delay` after it was read.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: std::time::Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
