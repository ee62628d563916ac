//! Backend choice. A [`Compiled`] route table is built once per swap: per
//! color, the in-rotation backends' shared state, plus the preview and
//! sticky rules in ready-to-use form. Choosing a backend is then one lookup
//! of the color (preview, sticky cookie, or a weighted draw) and one pick
//! within it (round-robin or least-inflight), skipping backends whose
//! connects just failed unless nothing else is left.

use crate::backend::BackendState;
use crate::headers::cookie;
use crate::{Balance, Color, RouteTable, Weights};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn idx(color: Color) -> usize {
    match color {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

/// The in-rotation backends of one color.
pub(crate) struct ColorSet {
    backends: Box<[Arc<BackendState>]>,
    next: AtomicUsize,
}

/// What sticky routing needs: the cookie name and the ready `Set-Cookie`
/// value per color.
struct Sticky {
    cookie: Box<str>,
    set_cookie: [HeaderValue; 2],
}

/// A route table in the form the hot path uses.
pub(crate) struct Compiled {
    /// The table it was built from, as given.
    pub(crate) table: Arc<RouteTable>,
    colors: [ColorSet; 2],
    weights: Weights,
    preview: Option<(HeaderName, Box<str>)>,
    sticky: Option<Sticky>,
    balance: Balance,
}

/// A chosen backend.
pub(crate) struct Pick {
    pub(crate) backend: Arc<BackendState>,
    /// `Set-Cookie` for the answer: the client was assigned a color.
    pub(crate) set_cookie: Option<HeaderValue>,
}

/// The outcome of one choice.
pub(crate) enum Choice {
    /// Forward there.
    Backend(Pick),
    /// No in-rotation backend for the chosen color(s): wait for a table.
    Wait(Color),
    /// Every candidate was tried and failed to connect.
    Exhausted(Color),
}

/// Backends already tried for one request (their connect failed).
#[derive(Default)]
pub(crate) struct Tried(Vec<Arc<BackendState>>);

impl Tried {
    pub(crate) fn push(&mut self, b: Arc<BackendState>) {
        self.0.push(b);
    }

    fn contains(&self, b: &Arc<BackendState>) -> bool {
        self.0.iter().any(|t| Arc::ptr_eq(t, b))
    }
}

impl Compiled {
    /// Compile `table`; `state` gives the long-lived state of a backend.
    pub(crate) fn new(
        table: Arc<RouteTable>,
        balance: Balance,
        mut state: impl FnMut(&crate::Backend) -> Arc<BackendState>,
    ) -> Compiled {
        let mut per_color: [Vec<Arc<BackendState>>; 2] = [Vec::new(), Vec::new()];
        for b in &table.backends {
            let s = state(b);
            if b.in_rotation {
                per_color[idx(b.color)].push(s);
            }
        }
        let [blue, green] = per_color;
        let set = |v: Vec<Arc<BackendState>>| ColorSet {
            backends: v.into_boxed_slice(),
            next: AtomicUsize::new(0),
        };
        let preview = table.preview.as_ref().and_then(|p| {
            HeaderName::from_bytes(p.header.as_bytes())
                .ok()
                .map(|h| (h, p.cookie.clone().into_boxed_str()))
        });
        let sticky = table.sticky.as_ref().and_then(|s| {
            let value = |c: Color| {
                HeaderValue::from_str(&format!(
                    "{}={}; Path=/; HttpOnly; SameSite=Lax",
                    s.cookie,
                    c.as_str()
                ))
                .ok()
            };
            Some(Sticky {
                cookie: s.cookie.clone().into_boxed_str(),
                set_cookie: [value(Color::Blue)?, value(Color::Green)?],
            })
        });
        Compiled {
            weights: table.weights,
            colors: [set(blue), set(green)],
            preview,
            sticky,
            balance,
            table,
        }
    }

    fn has_backends(&self, color: Color) -> bool {
        !self.colors[idx(color)].backends.is_empty()
    }

    /// Choose a backend for a request with these headers.
    pub(crate) fn choose(&self, headers: &HeaderMap, tried: &Tried) -> Choice {
        if let Some(color) = self.preview_color(headers) {
            if let Some(backend) = self.pick(color, tried) {
                return Choice::Backend(Pick {
                    backend,
                    set_cookie: None,
                });
            }
        }
        let w = self.weights;
        if w.blue == 0 && w.green == 0 {
            return Choice::Wait(Color::Blue);
        }
        let split = w.blue > 0 && w.green > 0;
        let (primary, assigned) = if !split {
            (
                if w.blue > 0 {
                    Color::Blue
                } else {
                    Color::Green
                },
                false,
            )
        } else {
            match self.sticky_color(headers) {
                Some(c) => (c, false),
                None => (self.draw(), true),
            }
        };
        for color in [primary, primary.other()] {
            if w.of(color) == 0 {
                continue;
            }
            if let Some(backend) = self.pick(color, tried) {
                // Tell the client its color when it was drawn now, or when it
                // had to move off the one its cookie named.
                let set_cookie = if split && (assigned || color != primary) {
                    self.sticky
                        .as_ref()
                        .map(|s| s.set_cookie[idx(color)].clone())
                } else {
                    None
                };
                return Choice::Backend(Pick {
                    backend,
                    set_cookie,
                });
            }
        }
        let any = [Color::Blue, Color::Green]
            .into_iter()
            .any(|c| w.of(c) > 0 && self.has_backends(c));
        if any {
            Choice::Exhausted(primary)
        } else {
            Choice::Wait(primary)
        }
    }

    fn preview_color(&self, headers: &HeaderMap) -> Option<Color> {
        let (header, cookie_name) = self.preview.as_ref()?;
        let from_header = headers
            .get(header)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Color::parse(v.trim()));
        from_header.or_else(|| cookie(headers, cookie_name).and_then(Color::parse))
    }

    fn sticky_color(&self, headers: &HeaderMap) -> Option<Color> {
        let sticky = self.sticky.as_ref()?;
        let color = Color::parse(cookie(headers, &sticky.cookie)?)?;
        (self.weights.of(color) > 0 && self.has_backends(color)).then_some(color)
    }

    /// A color drawn at random by weight.
    fn draw(&self) -> Color {
        let w = self.weights;
        let total = u32::from(w.blue) + u32::from(w.green);
        if rand::random_range(0..total) < u32::from(w.blue) {
            Color::Blue
        } else {
            Color::Green
        }
    }

    /// A backend of `color` not tried yet; one whose connects failed lately
    /// only when no other is left.
    fn pick(&self, color: Color, tried: &Tried) -> Option<Arc<BackendState>> {
        let set = &self.colors[idx(color)];
        let n = set.backends.len();
        match n {
            0 => return None,
            1 => {
                let b = &set.backends[0];
                return (!tried.contains(b)).then(|| b.clone());
            }
            _ => {}
        }
        let start = set.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback: Option<&Arc<BackendState>> = None;
        let mut best: Option<(&Arc<BackendState>, u64)> = None;
        for i in 0..n {
            let b = &set.backends[(start + i) % n];
            if tried.contains(b) {
                continue;
            }
            if b.is_down() {
                fallback.get_or_insert(b);
                continue;
            }
            match self.balance {
                Balance::RoundRobin => return Some(b.clone()),
                Balance::LeastInflight => {
                    let load = b.inflight();
                    if best.map_or(true, |(_, l)| load < l) {
                        best = Some((b, load));
                    }
                }
            }
        }
        best.map(|(b, _)| b).or(fallback).cloned()
    }
}
