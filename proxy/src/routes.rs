//! The route table: which backends exist, which color each belongs to, how
//! new clients are split between colors, and which requests bypass the
//! split. A table is immutable once built; changes swap in a new one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// One of the two colors a service's backends are grouped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Color {
    /// Blue.
    Blue,
    /// Green.
    Green,
}

impl Color {
    /// The lowercase name, as used in cookies and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    /// The other color.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    /// Parses `blue` or `green` (ASCII case-insensitive).
    pub fn parse(s: &str) -> Option<Color> {
        if s.eq_ignore_ascii_case("blue") {
            Some(Color::Blue)
        } else if s.eq_ignore_ascii_case("green") {
            Some(Color::Green)
        } else {
            None
        }
    }
}

/// A backend's stable name; the agent uses `<color>-<replica>` plus a
/// generation, e.g. `green-2@7`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub Arc<str>);

impl From<&str> for BackendId {
    fn from(s: &str) -> Self {
        BackendId(Arc::from(s))
    }
}

impl From<String> for BackendId {
    fn from(s: String) -> Self {
        BackendId(Arc::from(s))
    }
}

impl std::fmt::Display for BackendId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One upstream the proxy may forward to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Its stable name.
    pub id: BackendId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its color.
    pub color: Color,
    /// Whether new requests may be sent to it. A backend out of rotation
    /// keeps serving what it already has (drain it alone with
    /// [`crate::Proxy::drain`]).
    pub in_rotation: bool,
}

impl Backend {
    /// A backend in rotation.
    pub fn new(id: impl Into<BackendId>, addr: SocketAddr, color: Color) -> Backend {
        Backend { id: id.into(), addr, color, in_rotation: true }
    }
}

/// Percent of new clients per color; they add up to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    /// Percent to blue.
    pub blue: u8,
    /// Percent to green.
    pub green: u8,
}

impl Weights {
    /// Everything to `color`.
    pub fn all_to(color: Color) -> Weights {
        Weights::split(color, 100)
    }

    /// `pct` percent (clamped to 100) to `color`, the rest to the other.
    pub fn split(color: Color, pct: u8) -> Weights {
        let pct = pct.min(100);
        match color {
            Color::Blue => Weights { blue: pct, green: 100 - pct },
            Color::Green => Weights { blue: 100 - pct, green: pct },
        }
    }

    /// The weight of `color`.
    pub fn of(self, color: Color) -> u8 {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }
}

/// Requests that name a color reach it whatever the weights: a header
/// (`x-bg-color: green`) or a cookie (`bg-preview=green`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewRule {
    /// Header name, lowercase.
    pub header: String,
    /// Cookie name.
    pub cookie: String,
}

impl Default for PreviewRule {
    fn default() -> Self {
        PreviewRule { header: "x-bg-color".into(), cookie: "bg-preview".into() }
    }
}

/// While the weights split traffic, the proxy sets this cookie on answers
/// so that a client keeps its color on later requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyRule {
    /// Cookie name.
    pub cookie: String,
}

impl Default for StickyRule {
    fn default() -> Self {
        StickyRule { cookie: "bg-color".into() }
    }
}

/// Whether requests go on to the backends (`bgctl pause`, `maintenance`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Gate {
    /// They do.
    #[default]
    Open,
    /// Requests are held and go on, in the order they came, once the gate
    /// opens; one held longer than `max` gets a 503.
    Paused {
        /// The longest a request is held.
        max: Duration,
    },
    /// Every request gets a 503 with this text and `Retry-After`.
    Maintenance {
        /// The answer's body.
        message: Arc<str>,
        /// Sent as `Retry-After` (whole seconds).
        retry_after: Duration,
    },
}

/// Everything the proxy needs to pick a backend for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    /// All backends of both colors, in and out of rotation.
    pub backends: Vec<Backend>,
    /// The split of new clients between colors.
    pub weights: Weights,
    /// The preview bypass; `None` disables it.
    pub preview: Option<PreviewRule>,
    /// Sticky canary cookie; `None` disables stickiness.
    pub sticky: Option<StickyRule>,
    /// Whether requests go on at all.
    pub gate: Gate,
}

impl RouteTable {
    /// A table with the default preview and sticky rules.
    pub fn new(backends: Vec<Backend>, weights: Weights) -> RouteTable {
        RouteTable {
            backends,
            weights,
            preview: Some(PreviewRule::default()),
            sticky: Some(StickyRule::default()),
            gate: Gate::Open,
        }
    }

    /// An empty table: every request waits for a backend.
    pub fn empty() -> RouteTable {
        RouteTable::new(Vec::new(), Weights::all_to(Color::Blue))
    }
}
