//! websample: the app bluegreen deploys in its examples and tests.
//!
//! Environment: `VERSION` (default `v1`), `PORT` (default 5000),
//! `UNHEALTHY=1` (health check answers 503), `IGNORE_SIGTERM=1` (log SIGTERM
//! and keep running), `ERROR_RATE=0.05` (that fraction of `GET /` answers
//! 500, for canary tests), `BIND` (default `0.0.0.0`), `EVENT_LOG` (a file
//! the lifecycle lines below are appended to as well).
//!
//! `websample --healthcheck` checks a running instance instead (for a Docker
//! HEALTHCHECK in an image with no shell or curl). `websample task STEP...`
//! is a short task for one-off runs and exec hooks in that image: steps
//! `echo TEXT` (stdout), `warn TEXT` (stderr), `env KEY` (prints
//! `KEY=value`), `cat PATH`, `sleep SECS`, `exit N`, done in order (exit 0
//! at the end; 2 for an unknown step).
//!
//! Routes: `GET /` → `VERSION\n` with `x-version`; `GET /sleep/N` → the same
//! after N seconds (fractions allowed); `GET /healthz` → 200 or 503;
//! `GET /ws` → WebSocket echo. To look inside a replica: `GET /file/PATH`
//! (the file's bytes; 404 missing, 403 unreadable), `PUT /file/PATH`
//! (writes the body: 201, or 500 with the OS error), `GET /upstream`
//! (fetches `$UPSTREAM_URL`, plain HTTP, and answers its status and body;
//! 502 with the error), `GET /whoami` (JSON `version`, `uid`, `gid`,
//! `hostname`, `cwd`), `GET /big/N` (N MiB, streamed). Every answer
//! carries `x-version`.
//!
//! It logs one line per lifecycle event on stdout, `websample <epoch-ms>
//! <event>`, so tests can order what happened: `listening`, `sigterm`,
//! `sleep-start N`, `sleep-done N`, `exit`.
#![forbid(unsafe_code)]

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// What the app was configured with.
struct App {
    version: String,
    unhealthy: bool,
    error_rate: f64,
    counter: AtomicU64,
}

fn log(event: &str) {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let line = format!("websample {ms} {event}");
    println!("{line}");
    if let Ok(path) = std::env::var("EVENT_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).map(|v| v == "1" || v.eq_ignore_ascii_case("true")).unwrap_or(false)
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--healthcheck") {
        std::process::exit(healthcheck());
    }
    if std::env::args().nth(1).as_deref() == Some("task") {
        std::process::exit(task(std::env::args().skip(2).collect()));
    }
    serve();
}

/// `websample --healthcheck`: `GET /healthz` on the local `PORT`, exit 0
/// on 200 and 1 otherwise. It lets an image built `FROM scratch` (no curl)
/// declare a Docker HEALTHCHECK.
fn healthcheck() -> i32 {
    use std::io::{Read, Write};
    let port = std::env::var("PORT").ok().and_then(|p| p.parse::<u16>().ok()).unwrap_or(5000);
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return 1 };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return 1;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    if answer.starts_with("HTTP/1.1 200") {
        0
    } else {
        1
    }
}

/// `websample task STEP...` (see the crate doc); returns the exit code.
fn task(args: Vec<String>) -> i32 {
    let mut args = args.into_iter();
    while let Some(step) = args.next() {
        let Some(arg) = args.next() else {
            eprintln!("websample task: {step} needs an argument");
            return 2;
        };
        match step.as_str() {
            "echo" => println!("{arg}"),
            "warn" => eprintln!("{arg}"),
            "env" => println!("{arg}={}", std::env::var(&arg).unwrap_or_default()),
            "cat" => match std::fs::read_to_string(&arg) {
                Ok(text) => print!("{text}"),
                Err(e) => {
                    eprintln!("websample task: cat {arg}: {e}");
                    return 1;
                }
            },
            "sleep" => std::thread::sleep(Duration::from_secs_f64(arg.parse().unwrap_or(0.0))),
            "exit" => return arg.parse().unwrap_or(2),
            other => {
                eprintln!("websample task: unknown step {other:?}: use echo, warn, env, cat, sleep, exit");
                return 2;
            }
        }
    }
    0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn serve() {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => match p.parse() {
            Ok(p) => p,
            Err(_) => {
                eprintln!("websample: PORT={p:?} is not a port number");
                std::process::exit(2);
            }
        },
        Err(_) => 5000,
    };
    let bind = std::env::var("BIND").unwrap_or_else(|_| "0.0.0.0".into());
    let app = Arc::new(App {
        version: std::env::var("VERSION").unwrap_or_else(|_| "v1".into()),
        unhealthy: env_flag("UNHEALTHY"),
        error_rate: std::env::var("ERROR_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(0.0),
        counter: AtomicU64::new(0),
    });
    let ignore_sigterm = env_flag("IGNORE_SIGTERM");

    let listener = match TcpListener::bind((bind.as_str(), port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("websample: cannot listen on {bind}:{port}: {e}");
            std::process::exit(1);
        }
    };
    log(&format!(
        "listening {} version={}",
        listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        app.version
    ));

    let mut sigterm = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut sigint = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    let graceful = GracefulShutdown::new();
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let conn = http.serve_connection_with_upgrades(
                    TokioIo::new(stream),
                    hyper::service::service_fn(move |req| handle(app.clone(), req)),
                );
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move { let _ = conn.await; });
            }
            _ = sigterm.recv() => {
                log("sigterm");
                if ignore_sigterm {
                    log("ignoring sigterm");
                    continue;
                }
                break;
            }
            _ = sigint.recv() => {
                log("sigint");
                break;
            }
        }
    }
    drop(listener);
    // Finish what is in flight. Upgraded (WebSocket) connections are no
    // longer tracked by hyper; they end with the process.
    graceful.shutdown().await;
    log("exit");
}

/// Every answer's body: whole, or streamed (`/big/N`).
type Body = BoxBody<Bytes, std::convert::Infallible>;

/// Largest body `PUT /file/...` takes (64 MiB).
const MAX_PUT: usize = 64 << 20;
/// Size of one chunk of `/big/N`.
const BIG_CHUNK: usize = 64 << 10;

fn text(app: &App, status: StatusCode, body: String) -> Response<Body> {
    bytes(app, status, Bytes::from(body))
}

fn bytes(app: &App, status: StatusCode, body: Bytes) -> Response<Body> {
    with_version(app, status, Full::new(body).boxed())
}

fn with_version(app: &App, status: StatusCode, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&app.version) {
        resp.headers_mut().insert("x-version", v);
    }
    resp
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let resp = match path.as_str() {
        p if p.starts_with("/file/") => file(&app, req, &p["/file".len()..]).await,
        "/upstream" => upstream(&app).await,
        "/whoami" => whoami(&app),
        p if p.starts_with("/big/") => match p["/big/".len()..].parse::<usize>() {
            Ok(mib) if mib <= 4096 => {
                let chunks = mib * ((1 << 20) / BIG_CHUNK);
                let chunk = Bytes::from(vec![b'x'; BIG_CHUNK]);
                let stream = futures_util::stream::iter((0..chunks).map(move |_| {
                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.clone()))
                }));
                with_version(&app, StatusCode::OK, BodyExt::boxed(StreamBody::new(stream)))
            }
            _ => text(&app, StatusCode::BAD_REQUEST, "expected /big/N with N MiB up to 4096\n".into()),
        },
        "/" => {
            let n = app.counter.fetch_add(1, Ordering::Relaxed);
            if app.error_rate > 0.0 && fails(n, app.error_rate) {
                text(&app, StatusCode::INTERNAL_SERVER_ERROR, format!("{} error\n", app.version))
            } else {
                text(&app, StatusCode::OK, format!("{}\n", app.version))
            }
        }
        "/healthz" => {
            if app.unhealthy {
                text(&app, StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n".into())
            } else {
                text(&app, StatusCode::OK, "ok\n".into())
            }
        }
        "/ws" => websocket(&app, req),
        p if p.starts_with("/sleep/") => {
            let arg = &p["/sleep/".len()..];
            match arg.parse::<f64>() {
                Ok(secs) if (0.0..=3600.0).contains(&secs) => {
                    log(&format!("sleep-start {arg}"));
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                    log(&format!("sleep-done {arg}"));
                    text(&app, StatusCode::OK, format!("{}\n", app.version))
                }
                _ => text(&app, StatusCode::BAD_REQUEST, format!("bad sleep duration {arg:?}\n")),
            }
        }
        _ => text(&app, StatusCode::NOT_FOUND, "not found\n".into()),
    };
    Ok(resp)
}

/// `GET` or `PUT` a file by absolute path.
async fn file(app: &App, req: Request<Incoming>, path: &str) -> Response<Body> {
    use std::io::ErrorKind;
    match *req.method() {
        hyper::Method::GET => match tokio::fs::read(path).await {
            Ok(content) => bytes(app, StatusCode::OK, Bytes::from(content)),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                text(app, StatusCode::NOT_FOUND, format!("{path}: {e}\n"))
            }
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                text(app, StatusCode::FORBIDDEN, format!("{path}: {e}\n"))
            }
            Err(e) => text(app, StatusCode::INTERNAL_SERVER_ERROR, format!("{path}: {e}\n")),
        },
        hyper::Method::PUT => {
            let body = match http_body_util::Limited::new(req.into_body(), MAX_PUT).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return text(app, StatusCode::BAD_REQUEST, format!("reading the body: {e}\n")),
            };
            match tokio::fs::write(path, &body).await {
                Ok(()) => text(app, StatusCode::CREATED, format!("wrote {} bytes to {path}\n", body.len())),
                Err(e) => text(app, StatusCode::INTERNAL_SERVER_ERROR, format!("{path}: {e}\n")),
            }
        }
        _ => text(app, StatusCode::METHOD_NOT_ALLOWED, "GET or PUT\n".into()),
    }
}

/// Fetch `$UPSTREAM_URL` and answer its status and body.
async fn upstream(app: &App) -> Response<Body> {
    let Ok(url) = std::env::var("UPSTREAM_URL") else {
        return text(app, StatusCode::BAD_GATEWAY, "UPSTREAM_URL is not set\n".into());
    };
    let uri: hyper::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return text(app, StatusCode::BAD_GATEWAY, format!("UPSTREAM_URL {url:?}: {e}\n")),
    };
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let fetched = async {
        let resp = client.get(uri).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>((status, body))
    };
    match tokio::time::timeout(Duration::from_secs(10), fetched).await {
        Ok(Ok((status, body))) => bytes(app, status, body),
        Ok(Err(e)) => text(app, StatusCode::BAD_GATEWAY, format!("fetching {url}: {e}\n")),
        Err(_) => text(app, StatusCode::BAD_GATEWAY, format!("fetching {url}: no answer within 10s\n")),
    }
}

/// `{"version", "uid", "gid", "hostname", "cwd"}`, read from `/proc` (an
/// image built `FROM scratch` has no libc to ask).
fn whoami(app: &App) -> Response<Body> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let id = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let cwd = std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default();
    let body = serde_json::json!({
        "version": app.version,
        "uid": id("Uid:"),
        "gid": id("Gid:"),
        "hostname": hostname.trim(),
        "cwd": cwd,
    });
    let mut resp = text(app, StatusCode::OK, format!("{body}\n"));
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Spreads failures evenly: request `n` fails when the running count of
/// failures owed grows past the next whole number. Deterministic, so a
/// canary test sees exactly the configured rate.
fn fails(n: u64, rate: f64) -> bool {
    ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor()
}

fn websocket(app: &Arc<App>, mut req: Request<Incoming>) -> Response<Body> {
    let is_upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(app, StatusCode::BAD_REQUEST, "expected a WebSocket handshake\n".into());
    };
    if !is_upgrade {
        return text(app, StatusCode::BAD_REQUEST, "expected Upgrade: websocket\n".into());
    }
    let accept = derive_accept_key(key.as_bytes());
    let version = app.version.clone();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        // Say who we are first, then echo.
        if ws.send(tokio_tungstenite::tungstenite::Message::text(format!("hello {version}"))).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut resp = text(app, StatusCode::SWITCHING_PROTOCOLS, String::new());
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::fails;

    #[test]
    fn error_rate_is_exact_over_a_hundred_requests() {
        let failed = (0..100).filter(|&n| fails(n, 0.05)).count();
        assert_eq!(failed, 5);
        assert_eq!((0..100).filter(|&n| fails(n, 0.0)).count(), 0);
    }
}
