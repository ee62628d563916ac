//! `/metrics` end to end: a real agent (process runtime) with its metrics
//! listener, real traffic through its proxy, scraped over real HTTP and
//! parsed strictly (`bg_tests::prom`). Counts must match the traffic sent.

use bg_tests::agent::{Agent, Svc};
use bg_tests::api::{raw, Target};
use bg_tests::load::Load;
use bg_tests::status::outcome;
use bg_tests::wait::{eventually, eventually_async};
use futures_util::StreamExt;
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const OP: Duration = Duration::from_secs(60);
const BLUE_OK: u64 = 120;
const BLUE_404: u64 = 7;
const GREEN_OK: u64 = 80;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

async fn send_ok(addr: std::net::SocketAddr, n: u64) {
    let load = Load::keepalive(4).target(addr).max_requests(n).start();
    eventually("the load finished", Duration::from_secs(30), || load.finished()).await;
    let report = load.stop().await;
    assert_eq!((report.ok, report.failed), (n, 0), "{:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_traffic_operations_health_and_switches() {
    let agent = Agent::process().metrics().service(Svc::new("web").replicas(2)).start().await;
    let web = ("service", "web");
    let (blue, green) = (("color", "blue"), ("color", "green"));

    // Before anything: every family is there, and nothing is counted.
    let m = agent.scrape().await;
    for (family, kind) in [
        ("bg_requests", "counter"),
        ("bg_request_duration_seconds", "histogram"),
        ("bg_inflight_requests", "gauge"),
        ("bg_upgraded_connections", "gauge"),
        ("bg_replicas", "gauge"),
        ("bg_healthy_replicas", "gauge"),
        ("bg_replica_healthy", "gauge"),
        ("bg_operations", "counter"),
        ("bg_last_switch_timestamp_seconds", "gauge"),
    ] {
        assert_eq!(m.kind(family), Some(kind), "{family}");
    }
    assert_eq!(m.sum("bg_requests_total", &[web]), 0.0);
    assert_eq!(m.one("bg_healthy_replicas", &[web, blue]), 0.0);
    assert!(m.matching("bg_operations_total", &[web]).is_empty());
    assert!(m.matching("bg_last_switch_timestamp_seconds", &[web]).is_empty(), "no switch yet");

    // v1 on blue, with traffic: 2xx and 4xx.
    let first = agent.op("web", "deploy", json!({}), OP).await;
    assert_eq!(outcome(&first).0, "succeeded", "{first}");
    let listen = agent.listen("web");
    send_ok(listen, BLUE_OK).await;
    for _ in 0..BLUE_404 {
        let resp = raw(Target::Tcp(listen), "GET", "/no-such-page", &[], "").await.unwrap();
        assert_eq!(resp.status, 404);
    }

    // A WebSocket held open on blue counts as upgraded and in flight.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{listen}/ws")).await.expect("websocket via the proxy");
    assert!(ws.next().await.is_some(), "the echo server greets");
    let m = agent.scrape().await;
    assert_eq!(m.one("bg_upgraded_connections", &[web, blue]), 1.0);
    assert_eq!(m.one("bg_inflight_requests", &[web, blue]), 1.0);
    assert_eq!(m.one("bg_upgraded_connections", &[web, green]), 0.0);
    ws.close(None).await.expect("close the websocket");
    drop(ws);
    eventually_async("the closed websocket is no longer counted", Duration::from_secs(10), || async {
        agent.scrape().await.one("bg_upgraded_connections", &[web, blue]) == 0.0
    })
    .await;

    // v2 on green, then a separate promote, then traffic to green.
    let deployed = agent.op("web", "deploy", json!({"env": {"VERSION": "v2"}}), OP).await;
    assert_eq!(outcome(&deployed).0, "succeeded", "{deployed}");
    let m = agent.scrape().await;
    assert_eq!(m.one("bg_healthy_replicas", &[web, green]), 2.0);
    assert_eq!(m.one("bg_healthy_replicas", &[web, blue]), 2.0);
    let before_switch = now();
    let promoted = agent.op("web", "promote", json!({}), OP).await;
    assert_eq!(outcome(&promoted).0, "succeeded", "{promoted}");
    send_ok(listen, GREEN_OK).await;

    let m = agent.scrape().await;
    let class = |color, class| m.one("bg_requests_total", &[web, color, ("class", class)]);
    assert_eq!(class(blue, "2xx"), BLUE_OK as f64, "blue 2xx");
    assert_eq!(class(blue, "4xx"), BLUE_404 as f64, "blue 4xx");
    assert_eq!(class(blue, "1xx"), 1.0, "the websocket's 101");
    assert_eq!(class(blue, "5xx"), 0.0);
    assert_eq!(class(green, "2xx"), GREEN_OK as f64, "green 2xx");
    assert_eq!(m.sum("bg_requests_total", &[web, green]), GREEN_OK as f64, "green saw nothing else");

    // The histogram observed every response, and its buckets add up.
    let blue_total = (BLUE_OK + BLUE_404 + 1) as f64;
    assert_eq!(m.one("bg_request_duration_seconds_count", &[web, blue]), blue_total);
    assert_eq!(m.one("bg_request_duration_seconds_bucket", &[web, blue, ("le", "+Inf")]), blue_total);
    assert_eq!(m.one("bg_request_duration_seconds_count", &[web, green]), GREEN_OK as f64);
    let sum = m.one("bg_request_duration_seconds_sum", &[web, green]);
    assert!(sum > 0.0 && sum < GREEN_OK as f64 * 5.0, "latency sum {sum}");

    assert_eq!(m.one("bg_inflight_requests", &[web, blue]), 0.0);
    assert_eq!(m.one("bg_inflight_requests", &[web, green]), 0.0);

    // Operations and their outcomes; the switch time; health.
    assert_eq!(m.one("bg_operations_total", &[web, ("kind", "deploy"), ("outcome", "succeeded")]), 2.0);
    assert_eq!(m.one("bg_operations_total", &[web, ("kind", "promote"), ("outcome", "succeeded")]), 1.0);
    assert_eq!(m.sum("bg_operations_total", &[web]), 3.0, "nothing else counted");
    let switched = m.one("bg_last_switch_timestamp_seconds", &[web]);
    assert!(
        switched >= before_switch - 1.0 && switched <= now() + 1.0,
        "last switch {switched} is not the promote (after {before_switch})"
    );
    assert_eq!(m.one("bg_active_color", &[web, green]), 1.0);
    assert_eq!(m.one("bg_active_color", &[web, blue]), 0.0);
    assert_eq!(m.one("bg_revision", &[web]), 2.0);
    for replica in ["1", "2"] {
        assert_eq!(m.one("bg_replica_healthy", &[web, green, ("replica", replica)]), 1.0, "green {replica}");
    }
    assert_eq!(m.one("bg_healthy_replicas", &[web, green]), 2.0);
    assert_eq!(m.one("bg_replicas", &[web, blue]), 0.0, "the old color was stopped");
    assert!(m.matching("bg_replica_healthy", &[web, blue]).is_empty());

    // A failed operation is counted with its outcome.
    let bad = agent.op("web", "deploy", json!({"env": {"VERSION": "v3", "UNHEALTHY": "1"}}), OP);
    let bad = tokio::time::timeout(Duration::from_secs(60), bad).await.expect("the bad deploy ends");
    assert_eq!(outcome(&bad).0, "failed", "{bad}");
    let m = agent.scrape().await;
    assert_eq!(m.one("bg_operations_total", &[web, ("kind", "deploy"), ("outcome", "failed")]), 1.0);
    assert_eq!(
        m.one("bg_last_switch_timestamp_seconds", &[web]),
        switched,
        "a failed deploy moved no traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_answers_only_metrics() {
    let agent = Agent::process().metrics().service(Svc::new("web")).start().await;
    let addr = agent.metrics_addr().unwrap();
    let resp = raw(Target::Tcp(addr), "GET", "/v1/services", &[], "").await.unwrap();
    assert_eq!(resp.status, 404, "the control API is not on the metrics port");
    assert!(!resp.text().contains("\"services\""), "{}", resp.text());
}
