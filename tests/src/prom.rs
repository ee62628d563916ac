//! A strict parser of the OpenMetrics text format, for asserting on a real
//! `/metrics` scrape. The crates that parse this format (prometheus-parse)
//! skip lines they do not understand; a test must instead fail on them, so
//! this parser refuses anything the format does not allow: a sample before
//! its `# TYPE`, a family split in two, a duplicate series, a counter sample
//! without `_total`, a histogram whose buckets are not cumulative or whose
//! `+Inf` bucket differs from `_count`, a missing or early `# EOF`.

use std::collections::{BTreeMap, BTreeSet};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's own name (`bg_requests_total`, `x_bucket`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// One metric family: its `# TYPE`, `# HELP` and samples.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Family {
    /// `counter`, `gauge`, `histogram`, ...
    pub kind: String,
    /// The `# HELP` text, if any.
    pub help: Option<String>,
    /// Its samples in file order.
    pub samples: Vec<Sample>,
}

/// A parsed scrape.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scrape {
    /// Families by name.
    pub families: BTreeMap<String, Family>,
}

const KINDS: [&str; 8] =
    ["counter", "gauge", "histogram", "gaugehistogram", "summary", "info", "stateset", "unknown"];

impl Scrape {
    /// Parse a whole exposition; the error names the line and what is wrong.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let mut scrape = Scrape::default();
        let mut current: Option<String> = None;
        let mut closed: BTreeSet<String> = BTreeSet::new();
        let mut series: BTreeSet<String> = BTreeSet::new();
        let mut eof = false;
        let lines: Vec<&str> = text.split('\n').collect();
        // The text ends with a newline after `# EOF`, so the last split part is empty.
        let (last, body) = lines.split_last().ok_or("empty exposition")?;
        if !last.is_empty() {
            return Err("the exposition must end with a newline".into());
        }
        for (i, line) in body.iter().enumerate() {
            let at = |m: String| format!("line {}: {m}: {line:?}", i + 1);
            if eof {
                return Err(at("content after # EOF".into()));
            }
            if *line == "# EOF" {
                eof = true;
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (what, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let arg = parts.next();
                if !valid_name(name) {
                    return Err(at(format!("bad metric name {name:?}")));
                }
                if current.as_deref() != Some(name) {
                    if let Some(prev) = current.take() {
                        closed.insert(prev);
                    }
                    if closed.contains(name) {
                        return Err(at(format!("family {name} appears twice")));
                    }
                    current = Some(name.to_string());
                }
                let family = scrape.families.entry(name.to_string()).or_default();
                if !family.samples.is_empty() {
                    return Err(at("metadata after samples".into()));
                }
                match (what, arg) {
                    ("TYPE", Some(kind)) if KINDS.contains(&kind) => {
                        if !family.kind.is_empty() {
                            return Err(at("second # TYPE".into()));
                        }
                        family.kind = kind.to_string();
                    }
                    ("HELP", Some(help)) => family.help = Some(unescape(help).map_err(at)?),
                    ("UNIT", Some(_)) => {}
                    _ => return Err(at("unknown metadata line".into())),
                }
                continue;
            }
            let sample = parse_sample(line).map_err(at)?;
            let family_name = current.clone().ok_or_else(|| at("sample before any # TYPE".into()))?;
            let family = scrape.families.get_mut(&family_name).expect("current family exists");
            if family.kind.is_empty() {
                return Err(at("sample of a family without # TYPE".into()));
            }
            let suffixes: &[&str] = match family.kind.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" | "gaugehistogram" => {
                    &["_bucket", "_sum", "_count", "_created", "_gcount", "_gsum"]
                }
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            if !suffixes.iter().any(|s| sample.name == format!("{family_name}{s}")) {
                return Err(at(format!(
                    "sample {} does not belong to {} family {family_name}",
                    sample.name, family.kind
                )));
            }
            if family.kind == "counter"
                && sample.name.ends_with("_total")
                && (sample.value.is_nan() || sample.value < 0.0)
            {
                return Err(at("a counter is negative or NaN".into()));
            }
            let key = format!("{}{:?}", sample.name, sample.labels);
            if !series.insert(key) {
                return Err(at("duplicate series".into()));
            }
            family.samples.push(sample);
        }
        if !eof {
            return Err("no # EOF line at the end".into());
        }
        for (name, family) in &scrape.families {
            if family.kind == "histogram" {
                check_histogram(name, family)?;
            }
        }
        Ok(scrape)
    }

    /// The `# TYPE` of a family.
    pub fn kind(&self, family: &str) -> Option<&str> {
        self.families.get(family).map(|f| f.kind.as_str())
    }

    /// Samples called `name` whose labels include every pair of `labels`.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.families
            .values()
            .flat_map(|f| &f.samples)
            .filter(|s| {
                s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample called `name` with these labels; panics
    /// (with the candidates) when there is none or more than one.
    pub fn one(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.matching(name, labels).as_slice() {
            [s] => s.value,
            found => panic!("expected one sample {name}{labels:?}, found {}: {found:?}", found.len()),
        }
    }

    /// The sum of the samples called `name` with these labels.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).iter().map(|s| s.value).sum()
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad sample name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let mut end = None;
        loop {
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if !valid_name(&key) || key.contains(':') {
                return Err(format!("bad label name {key:?}"));
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} needs a quoted value"));
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape \\{other:?} in label {key}")),
                    },
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated value of label {key}")),
                }
            }
            if labels.insert(key.clone(), value).is_some() {
                return Err(format!("label {key} given twice"));
            }
            match chars.peek() {
                Some((_, ',')) => {
                    chars.next();
                }
                Some((_, '}')) => {}
                _ => return Err("labels must be separated by ','".into()),
            }
        }
        let end = end.ok_or("unterminated label set")?;
        rest = &after[end + 1..];
    }
    let rest = rest.strip_prefix(' ').ok_or("a single space must precede the value")?;
    let mut parts = rest.split(' ');
    let value = parts.next().unwrap_or("");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(ts) = parts.next() {
        ts.parse::<f64>().map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if parts.next().is_some() {
        return Err("trailing text after the sample".into());
    }
    Ok(Sample { name: name.to_string(), labels, value })
}

fn unescape(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad escape \\{other:?}")),
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

fn check_histogram(name: &str, family: &Family) -> Result<(), String> {
    /// Per label set: (bucket bound, cumulative count) pairs and `_count`.
    type Series = (Vec<(f64, f64)>, Option<f64>);
    let mut sets: BTreeMap<String, Series> = BTreeMap::new();
    for s in &family.samples {
        let mut labels = s.labels.clone();
        let le = labels.remove("le");
        let entry = sets.entry(format!("{labels:?}")).or_default();
        match (s.name.strip_prefix(name), le) {
            (Some("_bucket"), Some(le)) => {
                let bound = match le.as_str() {
                    "+Inf" => f64::INFINITY,
                    b => b.parse::<f64>().map_err(|_| format!("{name}: bad le {b:?}"))?,
                };
                entry.0.push((bound, s.value));
            }
            (Some("_bucket"), None) => return Err(format!("{name}: a bucket without le")),
            (Some("_count"), _) => entry.1 = Some(s.value),
            _ => {}
        }
    }
    for (labels, (buckets, count)) in sets {
        if !buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1) {
            return Err(format!("{name}{labels}: buckets are not increasing and cumulative: {buckets:?}"));
        }
        match (buckets.last(), count) {
            (Some((bound, n)), Some(count)) if bound.is_infinite() && *n == count => {}
            _ => return Err(format!("{name}{labels}: the +Inf bucket must exist and equal _count")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP r Requests.\n# TYPE r counter\nr_total{s=\"a\",c=\"x\\\"y\"} 3\n\
        # TYPE g gauge\ng 1.5\n# TYPE h histogram\nh_sum{s=\"a\"} 0.3\nh_count{s=\"a\"} 2\n\
        h_bucket{le=\"0.1\",s=\"a\"} 1\nh_bucket{le=\"+Inf\",s=\"a\"} 2\n# EOF\n";

    #[test]
    fn a_good_exposition_parses() {
        let s = Scrape::parse(GOOD).unwrap();
        assert_eq!(s.kind("r"), Some("counter"));
        assert_eq!(s.one("r_total", &[("s", "a")]), 3.0);
        assert_eq!(s.matching("r_total", &[])[0].labels["c"], "x\"y");
        assert_eq!(s.one("g", &[]), 1.5);
        assert_eq!(s.one("h_bucket", &[("le", "+Inf")]), 2.0);
        assert_eq!(s.families["r"].help.as_deref(), Some("Requests."));
    }

    #[test]
    fn anything_the_format_forbids_is_refused() {
        let bad = [
            ("no eof", GOOD.replace("# EOF\n", "")),
            ("after eof", format!("{GOOD}g 2\n")),
            ("no newline", GOOD.trim_end().to_string()),
            ("counter without _total", GOOD.replace("r_total", "r")),
            ("sample before type", format!("x 1\n{GOOD}")),
            ("duplicate series", GOOD.replace("g 1.5\n", "g 1.5\ng 2\n")),
            ("split family", GOOD.replace("# EOF\n", "# TYPE r counter\n# EOF\n")),
            (
                "not cumulative",
                GOOD.replace("h_bucket{le=\"+Inf\",s=\"a\"} 2", "h_bucket{le=\"+Inf\",s=\"a\"} 0"),
            ),
            ("inf differs from count", GOOD.replace("h_count{s=\"a\"} 2", "h_count{s=\"a\"} 5")),
            ("bad value", GOOD.replace("g 1.5", "g one")),
            ("unterminated label", GOOD.replace("{s=\"a\",c=", "{s=\"a,c=")),
            ("bad escape", GOOD.replace("x\\\"y", "x\\qy")),
            ("two spaces", GOOD.replace("g 1.5", "g  1.5")),
            ("negative counter", GOOD.replace("} 3\n", "} -3\n")),
        ];
        for (what, text) in bad {
            assert!(Scrape::parse(&text).is_err(), "{what} was accepted:\n{text}");
        }
    }
}
