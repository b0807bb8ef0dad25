//! What both binaries' `/metrics` share: the root registry ([`new_registry`]: the
//! binary's `<prefix>_build_info` and the `process_*` metrics), content negotiation
//! ([`Format::negotiate`]) and rendering ([`render`]).
//!
//! prometheus-client writes only OpenMetrics. Prometheus asks for it in `Accept`, but
//! `promtool check metrics`, curl and older scrapers read the Prometheus text format
//! 0.0.4, where a counter's HELP/TYPE name carries its `_total` suffix and there is no
//! `# EOF`. So OpenMetrics is served only to a scraper that asks for it, and everyone
//! else gets the same families translated line by line ([`openmetrics_to_text`]).
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// The commit the binary was built from (`crate::build_info::COMMIT`).
pub const GIT_COMMIT: &str = crate::build_info::COMMIT;
/// The compiler that built the binary, e.g. `rustc 1.95.0 (59807616e 2026-04-14)`.
pub const RUSTC_VERSION: &str = crate::build_info::RUSTC;

pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A registry with `<prefix>_build_info{version,commit,rustc} 1` and the `process_*`
/// metrics (read from `/proc/self` at each scrape). The binary registers its own metrics
/// in `registry.sub_registry_with_prefix(prefix)`.
pub fn new_registry(prefix: &str, version: &str) -> Registry {
    let mut root = Registry::default();
    let info = Family::<Vec<(String, String)>, Gauge>::default();
    info.get_or_create(&vec![
        ("version".into(), version.into()),
        ("commit".into(), GIT_COMMIT.into()),
        ("rustc".into(), RUSTC_VERSION.trim_start_matches("rustc ").into()),
    ])
    .set(1);
    root.sub_registry_with_prefix(prefix).register("build_info", "Build facts; the value is always 1", info);
    root.register_collector(Box::new(ProcessCollector));
    root
}

/// Creates each of `label_sets` in `family` (at zero), so a scraper sees the series
/// before their first event: `rate()` and alerts need the zero.
pub fn pre_create<S, M, C>(family: &Family<S, M, C>, label_sets: impl IntoIterator<Item = S>)
where
    S: Clone + std::hash::Hash + Eq,
    C: MetricConstructor<M>,
{
    for labels in label_sets {
        drop(family.get_or_create(&labels));
    }
}

/// An exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`).
    Text,
}

impl Format {
    /// The format for the `Accept` header values of a request (all of them, in order).
    /// OpenMetrics when an `application/openmetrics-text` range (version 1.0.0 or none)
    /// has a q-value above zero and at least as high as any range the text format
    /// matches (`text/plain` version 0.0.4 or none, `text/*`, `*/*`); the text format
    /// otherwise, including for no header, wildcards only, nothing acceptable or garbage.
    /// Ranges with an invalid q-value are ignored; parameters other than `version` and
    /// `q` (charset, Prometheus 3's `escaping`) do not matter.
    pub fn negotiate<'a>(accept: impl IntoIterator<Item = &'a str>) -> Format {
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.into_iter().flat_map(|v| v.split(',')) {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let (mut version, mut q) = (None, Some(1.0f32));
            for param in parts {
                let Some((key, value)) = param.split_once('=') else { continue };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "version" => version = Some(value.to_string()),
                    "q" => q = value.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q)),
                    _ => {}
                }
            }
            let Some(q) = q else { continue };
            let version = version.as_deref();
            match media.as_str() {
                "application/openmetrics-text" if matches!(version, None | Some("1.0.0")) => {
                    openmetrics = openmetrics.max(q);
                }
                "text/plain" if matches!(version, None | Some("0.0.4")) => text = text.max(q),
                "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Text => TEXT_CONTENT_TYPE,
        }
    }
}

/// The registry in `format`.
pub fn render(registry: &Registry, format: Format) -> String {
    let mut out = String::with_capacity(8192);
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    match format {
        Format::OpenMetrics => out,
        Format::Text => openmetrics_to_text(&out),
    }
}

/// OpenMetrics as prometheus-client writes it -> the Prometheus text format 0.0.4: a
/// counter family `x` becomes `x_total` in HELP/TYPE (its samples already are), an info
/// family `x` a gauge `x_info`, `unknown` becomes `untyped`; `# UNIT`, `# EOF`,
/// `_created` samples and exemplars are dropped. Samples are copied otherwise.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<&str> = None;
    let mut created: Option<String> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            created = matches!(kind, "counter" | "histogram" | "summary")
                .then(|| format!("{}_created", rest.split(' ').next().unwrap_or_default()));
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with('#') || line.is_empty() {
            // `# UNIT`, `# EOF`: OpenMetrics only.
            continue;
        } else {
            let sample = strip_exemplar(line);
            let sample_name = sample.split(['{', ' ']).next().unwrap_or_default();
            if created.as_deref() == Some(sample_name) {
                continue;
            }
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

/// A sample line without its exemplar (` # {labels} value [timestamp]`); label values
/// may contain ` # ` and escaped quotes.
fn strip_exemplar(line: &str) -> &str {
    let mut in_quotes = false;
    let mut escaped = false;
    let mut depth = 0;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '{' if !in_quotes => depth += 1,
            '}' if !in_quotes => depth -= 1,
            '#' if !in_quotes && depth == 0 => return line[..i].trim_end(),
            _ => {}
        }
    }
    line
}

/// `process_*` metrics of the standard Prometheus client libraries, read from
/// `/proc/self` at each scrape. A value that cannot be read (not Linux) is left out.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = ProcessSnapshot::read();
        let mut gauge = |name: &str, help: &str, value: Option<f64>| -> Result<(), std::fmt::Error> {
            let Some(v) = value else { return Ok(()) };
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        gauge("process_resident_memory_bytes", "Resident memory size in bytes.", snapshot.resident_bytes)?;
        gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", snapshot.virtual_bytes)?;
        gauge("process_open_fds", "Open file descriptors.", snapshot.open_fds)?;
        gauge("process_max_fds", "Maximum number of open file descriptors (soft limit).", snapshot.max_fds)?;
        gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            snapshot.start_time_seconds,
        )?;
        if let Some(cpu) = snapshot.cpu_seconds {
            let c = ConstCounter::new(cpu);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds.",
                None,
                c.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Clock ticks per second of `/proc` times: `USER_HZ`, 100 on every Linux ABI that
/// matters (the Go client library assumes the same).
const USER_HZ: f64 = 100.0;

#[derive(Debug, Default, PartialEq)]
struct ProcessSnapshot {
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

impl ProcessSnapshot {
    fn read() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let stat = read("/proc/self/stat").and_then(|s| parse_stat(&s));
        let boot_time = read("/proc/stat").and_then(|s| parse_boot_time(&s));
        Self {
            resident_bytes: read("/proc/self/status").and_then(|s| parse_resident_bytes(&s)),
            virtual_bytes: stat.map(|s| s.vsize as f64),
            cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / USER_HZ),
            start_time_seconds: stat.zip(boot_time).map(|(s, boot)| boot as f64 + s.starttime as f64 / USER_HZ),
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64),
            max_fds: read("/proc/self/limits").and_then(|s| parse_max_fds(&s)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
}

/// `/proc/self/stat`: fields after the command name, which is in parentheses and may
/// itself contain spaces and parentheses (so split after the last `)`).
fn parse_stat(s: &str) -> Option<Stat> {
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `f[0]` is field 3 (state): utime is field 14, stime 15, starttime 22, vsize 23.
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat { utime: field(14)?, stime: field(15)?, starttime: field(22)?, vsize: field(23)? })
}

/// `VmRSS:    4828 kB` in `/proc/self/status`.
fn parse_resident_bytes(status: &str) -> Option<f64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some((kb * 1024) as f64)
}

/// `btime 1733475000` in `/proc/stat`: boot time, seconds since the epoch.
fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

/// The soft limit of `Max open files` in `/proc/self/limits` ("unlimited" -> none).
fn parse_max_fds(limits: &str) -> Option<f64> {
    let line = limits.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse::<u64>().ok().map(|n| n as f64)
}

#[cfg(test)]
mod tests;
