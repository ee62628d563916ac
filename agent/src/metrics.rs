//! `/metrics` in the OpenMetrics text format (what Prometheus scrapes by
//! default): the proxy's traffic counters per service and color, replica
//! health, operations and their outcomes, and the last switch time.
//! Everything is read at scrape time from the proxies and controllers;
//! nothing is counted twice.
//!
//! | family | type | labels |
//! |--------|------|--------|
//! | `bg_requests_total` | counter | service, color, class (`1xx`..`5xx`) |
//! | `bg_request_duration_seconds` | histogram | service, color |
//! | `bg_inflight_requests` | gauge | service, color |
//! | `bg_upgraded_connections` | gauge | service, color |
//! | `bg_client_connections` | gauge | service |
//! | `bg_route_switches_total` | counter | service |
//! | `bg_replicas`, `bg_healthy_replicas` | gauge | service, color |
//! | `bg_replica_healthy`, `bg_replica_serving` | gauge | service, color, replica |
//! | `bg_active_color` | gauge | service, color |
//! | `bg_revision` | gauge | service |
//! | `bg_operations_total` | counter | service, kind, outcome |
//! | `bg_operation_running` | gauge | service, kind |
//! | `bg_operation_started_timestamp_seconds` | gauge | service, kind |
//! | `bg_last_switch_timestamp_seconds` | gauge | service |
//! | `bg_drains_cut_total` | counter | service |
//! | `bg_drain_cut_requests_total` | counter | service |

use crate::api::{Health, ReplicaState};
use crate::controller::Service;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Labels = Vec<(String, String)>;

/// What [`render`] produces: prometheus-client writes OpenMetrics text
/// (counter families without `_total`, samples with it, a final `# EOF`).
/// Announcing it as the classic `text/plain; version=0.0.4` makes
/// Prometheus read it with the wrong parser, which loses counter types.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads every service's numbers on each scrape.
#[derive(Debug)]
struct Collector {
    services: BTreeMap<String, Arc<Service>>,
    /// Certificate expiry by host (edge listeners).
    certs: BTreeMap<String, i64>,
    /// Answers per claimed host of the edge listeners.
    hosts: Vec<bg_proxy::HostStats>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("name", &self.name()).finish()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// One metric family: name, help, type, and its labelled samples.
struct Family<'a, T> {
    name: &'a str,
    help: &'a str,
    kind: MetricType,
    samples: Vec<(Labels, T)>,
}

impl<'a, T> Family<'a, T> {
    fn new(name: &'a str, help: &'a str, kind: MetricType) -> Self {
        Family { name, help, kind, samples: Vec::new() }
    }
}

fn encode_counters(encoder: &mut DescriptorEncoder, f: Family<'_, u64>) -> std::fmt::Result {
    let mut m = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
    for (l, v) in &f.samples {
        ConstCounter::new(*v).encode(m.encode_family(l)?)?;
    }
    Ok(())
}

fn encode_gauges(encoder: &mut DescriptorEncoder, f: Family<'_, f64>) -> std::fmt::Result {
    let mut m = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
    for (l, v) in &f.samples {
        ConstGauge::new(*v).encode(m.encode_family(l)?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut requests =
            Family::new("bg_requests", "Responses by service, color and status class.", MetricType::Counter);
        let mut inflight =
            Family::new("bg_inflight_requests", "Requests in flight through the proxy.", MetricType::Gauge);
        let mut upgraded = Family::new(
            "bg_upgraded_connections",
            "Open upgraded (WebSocket) connections.",
            MetricType::Gauge,
        );
        let mut connections =
            Family::new("bg_client_connections", "Open client connections.", MetricType::Gauge);
        let mut switches = Family::new("bg_route_switches", "Route table swaps.", MetricType::Counter);
        let mut health = Family::new(
            "bg_replica_healthy",
            "1 when a replica passes its health checks.",
            MetricType::Gauge,
        );
        let mut replicas =
            Family::new("bg_replicas", "Replicas of a color, whatever their health.", MetricType::Gauge);
        let mut healthy = Family::new(
            "bg_healthy_replicas",
            "Replicas of a color that pass their health checks.",
            MetricType::Gauge,
        );
        let mut serving = Family::new(
            "bg_replica_serving",
            "1 when a replica is in the proxy's rotation.",
            MetricType::Gauge,
        );
        let mut active =
            Family::new("bg_active_color", "1 for the color that takes traffic at rest.", MetricType::Gauge);
        let mut revision = Family::new("bg_revision", "Revision of the active color.", MetricType::Gauge);
        let mut outcomes =
            Family::new("bg_operations", "Ended operations by kind and outcome.", MetricType::Counter);
        let mut running =
            Family::new("bg_operation_running", "1 while an operation of that kind runs.", MetricType::Gauge);
        let mut started = Family::new(
            "bg_operation_started_timestamp_seconds",
            "When the running operation started (unix time).",
            MetricType::Gauge,
        );
        let mut drains_cut = Family::new(
            "bg_drains_cut",
            "Drains that reached drain_timeout and cut what was left.",
            MetricType::Counter,
        );
        let mut cut = Family::new(
            "bg_drain_cut_requests",
            "Requests and upgraded connections cut at a drain's deadline.",
            MetricType::Counter,
        );
        let mut last_switch = Family::new(
            "bg_last_switch_timestamp_seconds",
            "When traffic last moved (unix time).",
            MetricType::Gauge,
        );
        let mut histograms = Vec::new();

        for (name, svc) in &self.services {
            let stats = svc.proxy().stats();
            for color in [bg_proxy::Color::Blue, bg_proxy::Color::Green] {
                let t = stats.color(color);
                let c = color.as_str();
                for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                    requests
                        .samples
                        .push((labels(&[("service", name), ("color", c), ("class", class)]), t.responses[i]));
                }
                inflight.samples.push((labels(&[("service", name), ("color", c)]), t.inflight as f64));
                upgraded.samples.push((labels(&[("service", name), ("color", c)]), t.upgraded as f64));
                histograms.push((labels(&[("service", name), ("color", c)]), t.latency.clone()));
            }
            connections.samples.push((labels(&[("service", name)]), stats.connections as f64));
            switches.samples.push((labels(&[("service", name)]), stats.switches));
            drains_cut.samples.push((labels(&[("service", name)]), stats.drains_cut));
            cut.samples.push((labels(&[("service", name)]), stats.cut));
            let m = svc.metrics();
            for (color, number, h, state) in &m.replicas {
                let l =
                    labels(&[("service", name), ("color", color.as_str()), ("replica", &number.to_string())]);
                health.samples.push((l.clone(), if *h == Health::Healthy { 1.0 } else { 0.0 }));
                serving.samples.push((l, if *state == ReplicaState::Serving { 1.0 } else { 0.0 }));
            }
            for color in crate::api::Color::ALL {
                let of_color = || m.replicas.iter().filter(move |(c, ..)| *c == color);
                let l = labels(&[("service", name), ("color", color.as_str())]);
                replicas.samples.push((l.clone(), of_color().count() as f64));
                let n = of_color().filter(|(_, _, h, _)| *h == Health::Healthy).count();
                healthy.samples.push((l, n as f64));
                let on = if m.active == Some(color) { 1.0 } else { 0.0 };
                active.samples.push((labels(&[("service", name), ("color", color.as_str())]), on));
            }
            revision.samples.push((labels(&[("service", name)]), m.revision.unwrap_or(0) as f64));
            for (kind, outcome, n) in &m.outcomes {
                let (k, o) = (kind.to_string(), outcome.to_string());
                outcomes.samples.push((labels(&[("service", name), ("kind", &k), ("outcome", &o)]), *n));
            }
            if let Some(kind) = m.running {
                running.samples.push((labels(&[("service", name), ("kind", &kind.to_string())]), 1.0));
            }
            if let Some((kind, at)) = m.running_since {
                started.samples.push((labels(&[("service", name), ("kind", &kind.to_string())]), at));
            }
            if let Some(t) = m.last_switch {
                last_switch.samples.push((labels(&[("service", name)]), t));
            }
        }

        encode_counters(&mut encoder, requests)?;
        encode_gauges(&mut encoder, inflight)?;
        encode_gauges(&mut encoder, upgraded)?;
        encode_gauges(&mut encoder, connections)?;
        encode_counters(&mut encoder, switches)?;
        encode_gauges(&mut encoder, replicas)?;
        encode_gauges(&mut encoder, healthy)?;
        encode_gauges(&mut encoder, health)?;
        encode_gauges(&mut encoder, serving)?;
        encode_gauges(&mut encoder, active)?;
        encode_gauges(&mut encoder, revision)?;
        encode_counters(&mut encoder, outcomes)?;
        encode_gauges(&mut encoder, running)?;
        encode_gauges(&mut encoder, started)?;
        encode_counters(&mut encoder, drains_cut)?;
        encode_counters(&mut encoder, cut)?;
        encode_gauges(&mut encoder, last_switch)?;
        let mut certs = Family::new(
            "bg_certificate_expiry_seconds",
            "End of validity (Unix time) of the certificate served for a host.",
            MetricType::Gauge,
        );
        for (host, at) in &self.certs {
            certs.samples.push((labels(&[("host", host)]), *at as f64));
        }
        encode_gauges(&mut encoder, certs)?;
        let mut by_host = Family::new(
            "bg_host_requests",
            "Responses of the shared edge listeners by service, claimed host and status class.",
            MetricType::Counter,
        );
        for h in &self.hosts {
            for (i, n) in h.responses.iter().enumerate() {
                let class = format!("{}xx", i + 1);
                by_host
                    .samples
                    .push((labels(&[("service", &h.service), ("host", &h.host), ("class", &class)]), *n));
            }
        }
        encode_counters(&mut encoder, by_host)?;
        let mut m = encoder.encode_descriptor(
            "bg_request_duration_seconds",
            "Time to response headers through the proxy.",
            None,
            MetricType::Histogram,
        )?;
        for (l, h) in &histograms {
            let mut buckets: Vec<(f64, u64)> =
                bg_proxy::LATENCY_BUCKETS.iter().copied().zip(h.counts.iter().copied()).collect();
            buckets.push((f64::MAX, h.counts.get(bg_proxy::LATENCY_BUCKETS.len()).copied().unwrap_or(0)));
            m.encode_family(l)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                h.sum, h.count, &buckets, None,
            )?;
        }
        Ok(())
    }
}

/// Render the metrics text for these services.
pub fn render(services: &BTreeMap<String, Arc<Service>>) -> String {
    render_with_edge(services, None)
}

/// Render the metrics text for these services and the edge listeners.
pub fn render_with_edge(
    services: &BTreeMap<String, Arc<Service>>,
    edge: Option<&crate::edge::EdgeView>,
) -> String {
    let (certs, hosts) = edge.map(|e| (e.certs(), e.hosts())).unwrap_or_default();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collector { services: services.clone(), certs, hosts }));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

/// Serve `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    services: BTreeMap<String, Arc<Service>>,
    edge: crate::edge::EdgeView,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let services = Arc::new(services);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => { tracing::warn!(error = %e, "metrics accept failed"); continue }
            },
        };
        let services = services.clone();
        let edge = edge.clone();
        tracker.spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let services = services.clone();
                let edge = edge.clone();
                async move {
                    let mut resp = if req.uri().path() == "/metrics" {
                        let mut r = http::Response::new(Full::new(Bytes::from(render_with_edge(
                            &services,
                            Some(&edge),
                        ))));
                        r.headers_mut()
                            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(CONTENT_TYPE));
                        r
                    } else {
                        http::Response::new(Full::new(Bytes::from_static(b"see /metrics\n")))
                    };
                    if req.uri().path() != "/metrics" {
                        *resp.status_mut() = http::StatusCode::NOT_FOUND;
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
