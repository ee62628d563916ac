//! A small hand-written SVG of the medians: requests per second and p99
//! latency per proxy, one bar per load shape measured.

use super::cells::{Cell, Mode};
use std::fmt::Write;

const W: f64 = 760.0;
const PANEL_H: f64 = 220.0;
/// One color per load shape, in [`Mode::ALL`]'s order of those measured.
const COLORS: [&str; Mode::ALL.len()] =
    ["#3b6fb6", "#e08a2c", "#7fa6dc", "#f2c08a", "#2e8b57", "#8fbc8f", "#a0522d", "#9370db"];
/// Legend entries per row.
const LEGEND_PER_ROW: usize = 4;

/// The shapes measured, in report order (a bar each per peer).
fn modes(medians: &[Cell]) -> Vec<Mode> {
    Mode::ALL.into_iter().filter(|m| medians.iter().any(|c| c.mode == *m)).collect()
}

fn panel(s: &mut String, top: f64, title: &str, medians: &[Cell], value: impl Fn(&Cell) -> f64, unit: &str) {
    let peers: Vec<&str> = {
        let mut p: Vec<&str> = Vec::new();
        for c in medians {
            if !p.contains(&c.peer) {
                p.push(c.peer);
            }
        }
        p
    };
    let max = medians.iter().map(&value).fold(0.0, f64::max).max(1e-9);
    let (left, chart_h, base) = (60.0, PANEL_H - 70.0, top + PANEL_H - 35.0);
    let _ = writeln!(s, r#"<text x="{left}" y="{}" font-weight="bold">{title}</text>"#, top + 18.0);
    let group = (W - left - 20.0) / peers.len().max(1) as f64;
    let modes = modes(medians);
    let bar = group / (modes.len() + 1) as f64;
    for (i, peer) in peers.iter().enumerate() {
        let gx = left + i as f64 * group;
        for (j, mode) in modes.iter().enumerate() {
            let Some(c) = medians.iter().find(|c| c.peer == *peer && c.mode == *mode) else { continue };
            let v = value(c);
            let h = v / max * chart_h;
            let x = gx + bar * 0.5 + j as f64 * bar;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/>"#,
                base - h,
                bar * 0.9,
                COLORS[j]
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
                x + bar * 0.45,
                base - h - 3.0,
                if v >= 1000.0 { format!("{:.0}", v) } else { format!("{v:.2}") }
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{peer}</text>"#,
            gx + group / 2.0,
            base + 16.0
        );
    }
    let _ = writeln!(s, r#"<line x1="{left}" y1="{base}" x2="{}" y2="{base}" stroke="black"/>"#, W - 20.0);
    let _ = writeln!(s, r#"<text x="10" y="{:.1}" font-size="11">{unit}</text>"#, top + 40.0);
}

/// The SVG document.
pub fn render(medians: &[Cell], caption: &str) -> String {
    let legend_rows = modes(medians).len().div_ceil(LEGEND_PER_ROW).max(1);
    let h = PANEL_H * 2.0 + 34.0 + 16.0 * legend_rows as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    panel(&mut s, 0.0, "Throughput (higher is better)", medians, |c| c.rps, "req/s");
    panel(&mut s, PANEL_H, "p99 latency (lower is better)", medians, |c| c.p99_us as f64 / 1000.0, "ms");
    let top = PANEL_H * 2.0 + 15.0;
    for (j, mode) in modes(medians).iter().enumerate() {
        let x = 60.0 + (j % LEGEND_PER_ROW) as f64 * 170.0;
        let y = top + (j / LEGEND_PER_ROW) as f64 * 16.0;
        let _ =
            writeln!(s, r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/>"#, y - 10.0, COLORS[j]);
        let _ = writeln!(s, r#"<text x="{}" y="{y}">{}</text>"#, x + 16.0, mode.name());
    }
    let _ = writeln!(
        s,
        r#"<text x="60" y="{}" font-size="10">{caption}</text>"#,
        top + 16.0 * legend_rows as f64 + 6.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_gets_a_bar_and_a_legend_entry() {
        let cell = |peer: &'static str, mode: Mode| Cell {
            round: 1,
            rps: 1000.0,
            p50_us: 100,
            p99_us: 900,
            ok: 1,
            ..Cell::blank(peer, mode)
        };
        let medians: Vec<Cell> =
            ["bg-agent", "nginx"].into_iter().flat_map(|p| Mode::ALL.map(|m| cell(p, m))).collect();
        let svg = render(&medians, "caption");
        assert_eq!(svg.matches("<rect x=").count(), 2 * 2 * Mode::ALL.len() + Mode::ALL.len(), "{svg}");
        for m in Mode::ALL {
            assert!(svg.contains(m.name()), "{} in the legend", m.name());
        }
    }
}
