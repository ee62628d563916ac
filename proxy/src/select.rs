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
            HeaderName::from_bytes(p.header.as_bytes()).ok().map(|h| (h, p.cookie.clone().into_boxed_str()))
        });
        let sticky = table.sticky.as_ref().and_then(|s| {
            let value = |c: Color| {
                HeaderValue::from_str(&format!("{}={}; Path=/; HttpOnly; SameSite=Lax", s.cookie, c.as_str()))
                    .ok()
            };
            Some(Sticky {
                cookie: s.cookie.clone().into_boxed_str(),
                set_cookie: [value(Color::Blue)?, value(Color::Green)?],
            })
        });
        Compiled { weights: table.weights, colors: [set(blue), set(green)], preview, sticky, balance, table }
    }

    fn has_backends(&self, color: Color) -> bool {
        !self.colors[idx(color)].backends.is_empty()
    }

    /// Choose a backend for a request with these headers.
    pub(crate) fn choose(&self, headers: &HeaderMap, tried: &Tried) -> Choice {
        if let Some(color) = self.preview_color(headers) {
            if let Some(backend) = self.pick(color, tried) {
                return Choice::Backend(Pick { backend, set_cookie: None });
            }
        }
        let w = self.weights;
        if w.blue == 0 && w.green == 0 {
            return Choice::Wait(Color::Blue);
        }
        let split = w.blue > 0 && w.green > 0;
        let (primary, assigned) = if !split {
            (if w.blue > 0 { Color::Blue } else { Color::Green }, false)
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
                    self.sticky.as_ref().map(|s| s.set_cookie[idx(color)].clone())
                } else {
                    None
                };
                return Choice::Backend(Pick { backend, set_cookie });
            }
        }
        let any = [Color::Blue, Color::Green].into_iter().any(|c| w.of(c) > 0 && self.has_backends(c));
        if any {
            Choice::Exhausted(primary)
        } else {
            Choice::Wait(primary)
        }
    }

    fn preview_color(&self, headers: &HeaderMap) -> Option<Color> {
        let (header, cookie_name) = self.preview.as_ref()?;
        let from_header =
            headers.get(header).and_then(|v| v.to_str().ok()).and_then(|v| Color::parse(v.trim()));
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
                    if best.is_none_or(|(_, l)| load < l) {
                        best = Some((b, load));
                    }
                }
            }
        }
        best.map(|(b, _)| b).or(fallback).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Counters;
    use crate::{Backend, ProxyConfig};

    fn compile(table: RouteTable) -> Compiled {
        let config = ProxyConfig::default();
        let colors = [Arc::new(Counters::default()), Arc::new(Counters::default())];
        Compiled::new(Arc::new(table), Balance::RoundRobin, |b| {
            Arc::new(BackendState::new(b.id.clone(), b.addr, b.color, colors[idx(b.color)].clone(), &config))
        })
    }

    fn table(weights: Weights) -> RouteTable {
        RouteTable::new(
            vec![
                Backend::new("b1", "127.0.0.1:1".parse().unwrap(), Color::Blue),
                Backend::new("b2", "127.0.0.1:2".parse().unwrap(), Color::Blue),
                Backend::new("g1", "127.0.0.1:3".parse().unwrap(), Color::Green),
            ],
            weights,
        )
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn pick(c: &Compiled, h: &HeaderMap) -> (String, Option<HeaderValue>) {
        match c.choose(h, &Tried::default()) {
            Choice::Backend(p) => (p.backend.id.to_string(), p.set_cookie),
            Choice::Wait(_) => ("wait".into(), None),
            Choice::Exhausted(_) => ("exhausted".into(), None),
        }
    }

    #[test]
    fn round_robin_within_the_active_color_without_cookies() {
        let c = compile(table(Weights::all_to(Color::Blue)));
        let h = headers(&[("cookie", "bg-color=green")]);
        let ids: Vec<_> = (0..4).map(|_| pick(&c, &h)).collect();
        assert_eq!(ids[0].0, "b1");
        assert_eq!(ids[1].0, "b2");
        assert_eq!(ids[2].0, "b1");
        assert!(ids.iter().all(|(_, cookie)| cookie.is_none()));
    }

    #[test]
    fn split_assigns_and_then_honours_the_sticky_cookie() {
        let c = compile(table(Weights::split(Color::Green, 50)));
        let (id, cookie) = pick(&c, &HeaderMap::new());
        let cookie = cookie.expect("a new client gets its color");
        let color = if id == "g1" { "green" } else { "blue" };
        assert_eq!(cookie, format!("bg-color={color}; Path=/; HttpOnly; SameSite=Lax"));
        for _ in 0..20 {
            let (id, cookie) = pick(&c, &headers(&[("cookie", "bg-color=green")]));
            assert_eq!((id.as_str(), cookie), ("g1", None));
        }
    }

    #[test]
    fn preview_and_waiting_and_tried_backends() {
        let c = compile(table(Weights::all_to(Color::Blue)));
        assert_eq!(pick(&c, &headers(&[("x-bg-color", "green")])).0, "g1");
        assert_eq!(pick(&c, &headers(&[("cookie", "bg-preview=green")])).0, "g1");

        let empty = compile(RouteTable::empty());
        assert_eq!(pick(&empty, &HeaderMap::new()).0, "wait");

        let mut tried = Tried::default();
        for _ in 0..2 {
            match c.choose(&HeaderMap::new(), &tried) {
                Choice::Backend(p) => tried.push(p.backend),
                _ => panic!("expected a backend"),
            }
        }
        assert!(matches!(c.choose(&HeaderMap::new(), &tried), Choice::Exhausted(Color::Blue)));
    }

    #[test]
    fn a_backend_marked_down_is_skipped_unless_alone() {
        let c = compile(table(Weights::all_to(Color::Blue)));
        let b1 = c.colors[0].backends[0].clone();
        b1.mark_down();
        for _ in 0..4 {
            assert_eq!(pick(&c, &HeaderMap::new()).0, "b2");
        }
        let mut tried = Tried::default();
        tried.push(c.colors[0].backends[1].clone());
        match c.choose(&HeaderMap::new(), &tried) {
            Choice::Backend(p) => assert_eq!(p.backend.id.to_string(), "b1"),
            _ => panic!("the down backend is the last resort"),
        }
    }
}
