//! The transport to one agent: HTTP/1.1 over a unix socket or TCP (hyper's
//! low-level `client::conn::http1`, one connection per request), JSON in and
//! out, and the mapping of error answers to [`Error`] kinds. Nothing here
//! knows what a deploy is.

use crate::error::Error;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long connecting to an agent may take (5 seconds): a live agent
/// accepts at once; this only bounds black-holed TCP addresses.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a plain request/answer exchange may take (30 seconds). Event
/// streams have no limit: they last as long as the operation.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Error bodies larger than this (64 KiB) are cut before they are shown.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Where an agent listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AgentAddr {
    /// `unix:///path/to/agent.sock`.
    Unix(PathBuf),
    /// `http://host:port`.
    Http {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// `https://host:port` (`[agent] control_tls`).
    Https {
        /// Host name or IP address (IPv6 without brackets), checked
        /// against the agent's certificate.
        host: String,
        /// TCP port.
        port: u16,
    },
}

impl AgentAddr {
    /// Parses `unix:///path` or `http://host:port` (a bare absolute path is
    /// taken as a unix socket).
    pub fn parse(s: &str) -> Result<AgentAddr, String> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{s:?}: a unix socket address needs an absolute path, e.g. unix:///run/bg-agent/agent.sock"
                ));
            }
            return Ok(AgentAddr::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Ok(AgentAddr::Unix(PathBuf::from(s)));
        }
        for (scheme, tls) in [("http://", false), ("https://", true)] {
            let Some(rest) = s.strip_prefix(scheme) else { continue };
            let rest = rest.trim_end_matches('/');
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("{s:?}: missing port, e.g. {scheme}127.0.0.1:7070"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || host.contains('/') {
                return Err(format!("{s:?}: expected {scheme}host:port"));
            }
            let port: u16 = port.parse().map_err(|_| format!("{s:?}: {port:?} is not a port number"))?;
            let host = host.to_string();
            return Ok(if tls { AgentAddr::Https { host, port } } else { AgentAddr::Http { host, port } });
        }
        Err(format!("{s:?} is not an agent address: use unix:///path/to/agent.sock, http://host:port or https://host:port"))
    }

    /// The `Host` header value for requests to this agent.
    fn host_header(&self) -> String {
        match self {
            AgentAddr::Unix(_) => "localhost".to_string(),
            AgentAddr::Http { host, port } | AgentAddr::Https { host, port } if host.contains(':') => {
                format!("[{host}]:{port}")
            }
            AgentAddr::Http { host, port } | AgentAddr::Https { host, port } => format!("{host}:{port}"),
        }
    }
}

impl fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentAddr::Unix(path) => write!(f, "unix://{}", path.display()),
            AgentAddr::Http { .. } => write!(f, "http://{}", self.host_header()),
            AgentAddr::Https { .. } => write!(f, "https://{}", self.host_header()),
        }
    }
}

/// A byte stream to an agent, unix or TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A client for one agent.
#[derive(Debug, Clone)]
pub struct Client {
    addr: AgentAddr,
    token: Option<String>,
    /// The host's name in a fleet file.
    name: Option<String>,
    /// How long one request may take to be answered (`--host-timeout`).
    timeout: Duration,
    /// TLS for `https://` agents.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    /// A client for the agent at `addr`, sending `token` as a bearer token
    /// when there is one.
    pub fn new(addr: AgentAddr, token: Option<String>) -> Client {
        Client { addr, token, name: None, timeout: REQUEST_TIMEOUT, tls: None }
    }

    /// The same client, named as its host is in a fleet file.
    pub fn named(mut self, name: impl Into<String>) -> Client {
        self.name = Some(name.into());
        self
    }

    /// The same client, speaking TLS with `config` to an `https://` agent.
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Client {
        self.tls = Some(config);
        self
    }

    /// The same client, giving up on an answer after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The agent's address.
    pub fn addr(&self) -> &AgentAddr {
        &self.addr
    }

    /// The host's name when it has one, else its address.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.addr.to_string())
    }

    /// How the host is named in messages: `name (address)` or the address.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{name} ({})", self.addr),
            None => self.addr.to_string(),
        }
    }

    /// How long one answer may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn connect(&self) -> Result<Box<dyn Io>, Error> {
        let unreachable = |source| Error::Unreachable { addr: self.label(), source };
        let connect = async {
            Ok::<Box<dyn Io>, std::io::Error>(match &self.addr {
                AgentAddr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
                AgentAddr::Http { host, port } => {
                    let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    // Small request/answer exchanges: do not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    Box::new(stream)
                }
                AgentAddr::Https { host, port } => {
                    let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    let _ = stream.set_nodelay(true);
                    let config = self.tls.clone().ok_or_else(|| {
                        std::io::Error::other("https:// agents need --ca (no TLS settings were given)")
                    })?;
                    let name = rustls::pki_types::ServerName::try_from(host.clone())
                        .map_err(|e| std::io::Error::other(format!("{host:?}: {e}")))?;
                    Box::new(tokio_rustls::TlsConnector::from(config).connect(name, stream).await?)
                }
            })
        };
        let limit = CONNECT_TIMEOUT.min(self.timeout);
        match tokio::time::timeout(limit, connect).await {
            Ok(Err(e)) if crate::tls::reason(&e).is_some() => {
                Err(Error::Tls { addr: self.label(), reason: crate::tls::reason(&e).unwrap_or_default() })
            }
            Ok(result) => result.map_err(unreachable),
            Err(_) => Err(unreachable(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {}", humantime::format_duration(limit)),
            ))),
        }
    }

    /// Sends one request on a fresh connection and returns the answer if
    /// its status is a success; error answers become [`Error`]s.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, Error> {
        let io = self.connect().await?;
        let transport = |source: hyper::Error| match crate::tls::reason(&source) {
            // TLS 1.3: a refused client certificate shows on the first read.
            Some(reason) => Error::Tls { addr: self.label(), reason },
            None => Error::Transport { addr: self.label(), source },
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(transport)?;
        // The connection task ends when the answer's body is read or dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.host_header())
            .header(header::USER_AGENT, concat!("bgctl/", env!("CARGO_PKG_VERSION")))
            .header(header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Usage(format!("cannot build a request for {path:?}: {e}")))?;
        let resp = sender.send_request(req).await.map_err(transport)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.error_answer(resp).await)
    }

    /// Turns an error answer into the matching [`Error`].
    async fn error_answer(&self, resp: Response<Incoming>) -> Error {
        let status = resp.status();
        let body = match tokio::time::timeout(self.timeout, resp.into_body().collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            _ => Bytes::new(),
        };
        let (code, message) = match serde_json::from_slice::<bg_api::ErrorBody>(&body) {
            Ok(e) => (e.error.code, e.error.message),
            Err(_) => {
                let text =
                    String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]).trim().to_string();
                let text = if text.is_empty() {
                    status.canonical_reason().unwrap_or("error").to_string()
                } else {
                    text
                };
                (default_code(status).to_string(), text)
            }
        };
        let addr = self.label();
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => {
                Error::Unauthorized { addr, message }
            }
            StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::PAYLOAD_TOO_LARGE => {
                Error::Rejected { code, message }
            }
            StatusCode::CONFLICT => Error::Conflict { message },
            _ => Error::Agent { addr, status: status.as_u16(), code, message },
        }
    }

    /// Sends a request with a time limit and reads the whole answer.
    async fn exchange(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Bytes, Error> {
        let work = async {
            let resp = self.send(method, path, body).await?;
            resp.into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|source| Error::Transport { addr: self.label(), source })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| Error::Timeout { addr: self.label(), secs: self.timeout.as_secs() })?
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8], what: &str) -> Result<T, Error> {
        serde_json::from_slice(bytes).map_err(|source| Error::Decode {
            addr: self.label(),
            what: what.to_string(),
            source,
        })
    }

    /// `GET path`, decoded as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let bytes = self.exchange(Method::GET, path, None).await?;
        self.decode(&bytes, path)
    }

    /// `POST path` with a JSON body, the answer decoded as `T`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Error> {
        let body = serde_json::to_vec(body).map_err(|source| Error::Decode {
            addr: self.label(),
            what: "request body".into(),
            source,
        })?;
        let bytes = self.exchange(Method::POST, path, Some(body)).await?;
        self.decode(&bytes, path)
    }

    /// `GET path` answered by newline-delimited JSON, read line by line.
    pub async fn stream(&self, path: &str) -> Result<LineStream, Error> {
        self.open_stream(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body, answered by newline-delimited JSON.
    pub async fn post_stream<B: Serialize>(&self, path: &str, body: &B) -> Result<LineStream, Error> {
        let body = serde_json::to_vec(body).map_err(|source| Error::Decode {
            addr: self.label(),
            what: "request body".into(),
            source,
        })?;
        self.open_stream(Method::POST, path, Some(body)).await
    }

    /// The answer's head within the client's timeout; its body as lines,
    /// for as long as the agent sends them.
    async fn open_stream(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<LineStream, Error> {
        let resp = tokio::time::timeout(self.timeout, self.send(method, path, body))
            .await
            .map_err(|_| Error::Timeout { addr: self.label(), secs: self.timeout.as_secs() })??;
        Ok(LineStream { body: resp.into_body(), buf: Vec::new(), addr: self.label(), done: false })
    }
}

/// The machine code for an error answer that carried no [`ErrorBody`](bg_api::ErrorBody).
fn default_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        _ => "internal",
    }
}

/// A streamed answer, split into lines.
pub struct LineStream {
    body: Incoming,
    buf: Vec<u8>,
    addr: String,
    done: bool,
}

impl LineStream {
    /// The next non-empty line, or `None` when the agent ended the stream.
    pub async fn next_line(&mut self) -> Result<Option<String>, Error> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line).trim().to_string();
                if line.is_empty() {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.done {
                let rest = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).trim().to_string();
                return Ok((!rest.is_empty()).then_some(rest));
            }
            match self.body.frame().await {
                None => self.done = true,
                Some(Err(source)) => return Err(Error::Transport { addr: self.addr.clone(), source }),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// Percent-encode one path segment.
pub use bg_api::encode_segment as encode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print_back() {
        for s in [
            "unix:///run/bg-agent/agent.sock",
            "http://127.0.0.1:7070",
            "http://agent-1.example:7070",
            "http://[::1]:7070",
        ] {
            assert_eq!(AgentAddr::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(AgentAddr::parse("/tmp/a.sock").unwrap(), AgentAddr::Unix("/tmp/a.sock".into()));
        assert!(AgentAddr::parse("unix://relative.sock").is_err());
        assert!(AgentAddr::parse("http://host").unwrap_err().contains("port"));
        assert!(AgentAddr::parse("http://host:99999").is_err());
        assert_eq!(
            AgentAddr::parse("https://host:1").unwrap(),
            AgentAddr::Https { host: "host".into(), port: 1 }
        );
        assert!(AgentAddr::parse("agent:7070").is_err());
    }

    #[test]
    fn encoding_keeps_unreserved() {
        assert_eq!(encode("web-1_a.b~"), "web-1_a.b~");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
