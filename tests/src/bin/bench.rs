//! The benchmark: bg-proxy against nginx and HAProxy (each on one pinned
//! core), with the client straight to the upstream as the limit; then
//! switching under load, switch latency and drain time. With `--setting
//! product`: the `bg-agent` binary against nginx and HAProxy as users run
//! them, nothing pinned, with wrk beside the project's own client.
//!
//! `cargo run --release -p bg-tests --bin bench -- [--setting pinned|product] [--quick] [--json PATH] [--svg PATH]`
//!
//! It installs nothing: nginx and haproxy are used when on `PATH` and
//! skipped (with a note) when not. See BENCHMARKS.md.
#![forbid(unsafe_code)]

use bg_tests::bench::agent_peer::AgentHome;
use bg_tests::bench::peers::{write_config, Peer, Tools};
use bg_tests::bench::procs::{free_addr, on_path, pinned, Proc};
use bg_tests::bench::report::{markdown, Machine, Results};
use bg_tests::bench::summary::{paired, summaries};
use bg_tests::bench::{cells, inprocess, svg, switching, Plan, Setting};
use clap::Parser;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// Benchmark bg-proxy against nginx and HAProxy.
#[derive(Parser, Debug)]
struct Args {
    /// How the peers run: `pinned` (the proxy library, one core each) or
    /// `product` (bg-agent and the peers as users run them, unpinned).
    #[arg(long, value_enum, default_value = "pinned")]
    setting: Setting,
    /// A few seconds per cell instead of the full run.
    #[arg(long)]
    quick: bool,
    /// Where the results JSON goes.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// Where the SVG plot goes.
    #[arg(long, default_value = "target/bench/bench.svg")]
    svg: PathBuf,
    /// Skip the throughput cells (switching and drain only).
    #[arg(long)]
    no_throughput: bool,
    /// Skip switching and drain (throughput only).
    #[arg(long)]
    no_switching: bool,
    /// Only these peers (direct, bg-proxy, bg-agent, nginx, haproxy), comma-separated.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// `[agent] worker_threads` of bg-agent in the product setting (else
    /// the agent's default, half the cores).
    #[arg(long, value_name = "N")]
    agent_workers: Option<usize>,
    /// Only these load shapes, comma-separated (for profiling one of them).
    #[arg(long, value_delimiter = ',', value_enum)]
    modes: Vec<cells::Mode>,
    /// Seconds per measured cell instead of the plan's (for profiling).
    #[arg(long)]
    cell_secs: Option<u64>,
    /// Rounds instead of the plan's.
    #[arg(long)]
    rounds: Option<usize>,
    /// Only write the config the run would start nginx or haproxy with
    /// (into --config-dir, for --listen in front of --upstream), print its
    /// path and exit: the profile script runs the same configs.
    #[arg(long, value_name = "PEER", requires_all = ["config_dir", "listen", "upstream"])]
    write_config: Option<String>,
    /// Where --write-config puts the file.
    #[arg(long, value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// The address the written config listens on.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// The upstream the written config sends to.
    #[arg(long, value_name = "ADDR")]
    upstream: Option<std::net::SocketAddr>,
}

/// `--write-config`: the peer's config file, written; its path.
fn write_peer_config(args: &Args, name: &str) -> Result<PathBuf, String> {
    let peer = Peer::ALL
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| format!("unknown peer {name:?} (nginx or haproxy)"))?;
    let (Some(dir), Some(listen), Some(upstream)) = (&args.config_dir, args.listen, args.upstream) else {
        return Err("--write-config needs --config-dir, --listen and --upstream".into());
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("--config-dir {}: {e}", dir.display()))?;
    write_config(peer, dir, listen, &[upstream])
        .ok_or_else(|| format!("{name} takes no config file (nginx or haproxy do)"))
}

/// Run this process again under `taskset -c 0`, so the load generator has
/// core 0 and the proxies core 1.
fn pin_self() -> bool {
    if std::env::var_os("BG_BENCH_PINNED").is_some() {
        return true;
    }
    let Some(taskset) = on_path("taskset") else {
        eprintln!("taskset not found (util-linux): processes are not pinned");
        return false;
    };
    let exe = std::env::current_exe().expect("current exe");
    let err = Command::new(taskset)
        .arg("-c")
        .arg("0")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env("BG_BENCH_PINNED", "1")
        .exec();
    eprintln!("could not pin with taskset: {err}; running unpinned");
    false
}

/// Build the helper binaries (release) next to this one.
fn build_helpers() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-q", "-p", "bg-tests", "-p", "websample", "-p", "bg-agent", "--bins"])
        .arg("--manifest-path")
        .arg(bg_tests::bins::workspace_root().join("Cargo.toml"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the benchmark helpers failed");
}

fn websample(tools: &Tools, version: &str) -> Proc {
    let addr = free_addr();
    let mut cmd = Command::new(&tools.websample);
    cmd.env("PORT", addr.port().to_string()).env("BIND", "127.0.0.1").env("VERSION", version);
    Proc::start(&format!("websample {version}"), cmd, addr, None)
}

fn main() {
    let args = Args::parse();
    if let Some(name) = &args.write_config {
        match write_peer_config(&args, name) {
            Ok(path) => println!("{}", path.display()),
            Err(e) => {
                eprintln!("bench: {e}");
                std::process::exit(2);
            }
        }
        return;
    }
    let pinned_ok = args.setting == Setting::Pinned && pin_self();
    build_helpers();
    let bin_dir = std::env::current_exe().expect("current exe").parent().expect("bin dir").to_path_buf();
    let tools = Tools::find(&bin_dir);
    let mut plan = if args.quick { Plan::quick() } else { Plan::full() };
    if let Some(secs) = args.cell_secs {
        plan.cell = std::time::Duration::from_secs(secs);
    }
    if let Some(rounds) = args.rounds {
        plan.rounds = rounds.max(1);
    }
    let modes: Vec<cells::Mode> = if args.modes.is_empty() {
        // TLS needs an https listener: bg-agent's edge, not the pinned
        // bench server.
        cells::Mode::ALL
            .into_iter()
            .filter(|m| !m.wrk() || tools.wrk.is_some())
            .filter(|m| !m.h2load() || tools.h2load.is_some())
            .filter(|m| !m.tls() || args.setting == Setting::Product)
            .collect()
    } else {
        args.modes.clone()
    };
    if tools.wrk.is_none() {
        eprintln!("skipped the wrk cells: wrk is not on PATH (Debian: apt-get install -y wrk)");
    }
    if tools.h2load.is_none() {
        eprintln!("skipped the h2c cells: h2load is not on PATH (Debian: apt-get install -y nghttp2-client)");
    }
    let mut missing = Vec::new();
    for (peer, package) in [(Peer::Nginx, "nginx"), (Peer::Haproxy, "haproxy")] {
        if !tools.has(peer) {
            missing.push(format!("{package}: not on PATH (Debian: apt-get install -y {package})"));
        }
    }
    for m in &missing {
        eprintln!("skipped {m}");
    }
    let peers: Vec<Peer> = Peer::of(args.setting)
        .into_iter()
        .filter(|p| tools.has(*p) && (args.peers.is_empty() || args.peers.iter().any(|n| n == p.name())))
        .collect();
    let machine = Machine::read(tools.version(Peer::Nginx), tools.version(Peer::Haproxy), pinned_ok);

    // One certificate for every peer's https listener, when a TLS shape runs.
    let cert = modes.iter().any(|m| m.tls()).then(bg_tests::bench::tls::BenchCert::new);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let results = rt.block_on(async {
        // The product setting's upstream is bg-agent's own replica; the
        // pinned one's a bench-upstream on the load generator's core.
        let (agent, upstream) = match args.setting {
            Setting::Product => {
                let home = AgentHome::prepare(&tools, cert.as_ref(), args.agent_workers).await;
                eprintln!("bg-agent's replica {} is every peer's upstream", home.upstream);
                (Some(home), None)
            }
            Setting::Pinned => {
                let up_addr = free_addr();
                let mut cmd = pinned(0, &tools.upstream);
                cmd.arg(up_addr.to_string());
                (None, Some(Proc::start("bench-upstream", cmd, up_addr, None)))
            }
        };
        let up_addr =
            agent.as_ref().map_or_else(|| upstream.as_ref().expect("an upstream").addr, |a| a.upstream);
        let measured = if args.no_throughput {
            Default::default()
        } else {
            cells::all(&tools, args.setting, agent.as_ref(), &plan, &peers, &modes, up_addr, cert.as_ref())
                .await
        };
        drop(upstream);
        drop(agent);

        // Switching compares the proxies' switch mechanisms and the
        // library in process: the pinned setting's question. bg-agent's
        // switches are the end-to-end tests'.
        let (switching, inprocess) = if args.no_switching || args.setting == Setting::Product {
            (Vec::new(), None)
        } else {
            let (v1, v2) = (websample(&tools, "v1"), websample(&tools, "v2"));
            let ups = [(v1.addr, "v1".to_string()), (v2.addr, "v2".to_string())];
            let mut runs = Vec::new();
            for peer in peers.iter().copied().filter(|p| *p != Peer::Direct) {
                let run = switching::run(&tools, args.setting, &plan, peer, &ups).await;
                eprintln!("switching {}: {} requests, {} failed", run.peer, run.requests, run.failed);
                runs.push(run);
            }
            (runs, Some(inprocess::run(&plan, ups[0].0, ups[1].0).await))
        };
        Results {
            mode: if args.quick { "quick" } else { "full" },
            setting: args.setting,
            machine,
            missing,
            cell_seconds: plan.cell.as_secs_f64(),
            rounds: plan.rounds,
            clients: plan.clients,
            summaries: summaries(&measured),
            tls: measured.tls.clone(),
            agent_workers: args.agent_workers,
            paired: paired(&measured.cells),
            cells: measured.cells,
            switching,
            inprocess,
        }
    });

    let text = markdown(&results);
    println!("{text}");
    // The measurements first: the plot is drawn from what is saved.
    let write = |path: &PathBuf, contents: String| {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
    };
    write(&args.json, serde_json::to_string_pretty(&results).expect("results are JSON"));
    write(&args.svg, svg::render(&results.summaries, &caption(&results)));
}

fn caption(r: &Results) -> String {
    let how = match r.setting {
        Setting::Pinned => "proxies pinned to one core",
        Setting::Product => "as users run them, nothing pinned",
    };
    format!(
        "{} cores, {}; {} clients; {} rounds x {:.0} s per proxy; {how}",
        r.machine.cores, r.machine.cpu, r.clients, r.rounds, r.cell_seconds
    )
}
