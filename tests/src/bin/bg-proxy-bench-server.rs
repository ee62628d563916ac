//! The real `bg_proxy::Proxy` as its own process for the benchmark, on one
//! thread (a current-thread runtime) so it gets the same single core as the
//! nginx and HAProxy it is compared with.
//!
//! Usage: `bg-proxy-bench-server LISTEN BLUE [GREEN]`. It prints
//! `listening ADDR` once it accepts. With GREEN, each SIGUSR1 swaps all
//! traffic to the other color (one `update_routes` call) and prints
//! `switched COLOR <microseconds the call took>`.
#![forbid(unsafe_code)]

use bg_proxy::{Backend, Color, Proxy, ProxyConfig, RouteTable, Weights};
use std::net::SocketAddr;
use std::time::Instant;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse = |i: usize| -> Option<SocketAddr> {
        args.get(i).map(|a| a.parse().unwrap_or_else(|e| panic!("{a:?} is not an address: {e}")))
    };
    let (Some(listen), Some(blue)) = (parse(0), parse(1)) else {
        eprintln!("usage: bg-proxy-bench-server LISTEN BLUE [GREEN]");
        std::process::exit(2);
    };
    let green = parse(2);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let proxy = Proxy::new(ProxyConfig::default());
        let mut backends = vec![Backend::new("blue-1", blue, Color::Blue)];
        if let Some(green) = green {
            backends.push(Backend::new("green-1", green, Color::Green));
        }
        proxy.set_routes(RouteTable::new(backends, Weights::all_to(Color::Blue)));
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind listen address");
        println!("listening {}", listener.local_addr().expect("local addr"));
        let shutdown = CancellationToken::new();
        let mut usr1 = signal(SignalKind::user_defined1()).expect("SIGUSR1 handler");
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let server = tokio::spawn(proxy.clone().serve(listener, shutdown.clone()));
        let mut active = Color::Blue;
        loop {
            tokio::select! {
                _ = usr1.recv() => {
                    if green.is_none() {
                        continue;
                    }
                    active = active.other();
                    let t = Instant::now();
                    proxy.update_routes(|table| table.weights = Weights::all_to(active));
                    println!("switched {} {}", active.as_str(), t.elapsed().as_micros());
                }
                _ = term.recv() => break,
            }
        }
        shutdown.cancel();
        let _ = server.await;
    });
}
