use super::*;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

fn negotiate(accept: &[&str]) -> Format {
    Format::negotiate(accept.iter().copied())
}

#[test]
fn openmetrics_only_when_asked_for() {
    use Format::*;
    let cases: &[(&[&str], Format)] = &[
        // No header, curl's default, promtool's input.
        (&[], Text),
        (&["*/*"], Text),
        (&["text/plain"], Text),
        (&["text/plain; version=0.0.4"], Text),
        (&["application/openmetrics-text"], OpenMetrics),
        (&["application/openmetrics-text; version=1.0.0; charset=utf-8"], OpenMetrics),
        // Prometheus 2.x's default scrape header.
        (
            &["application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"],
            OpenMetrics,
        ),
        // Prometheus 3.x: escaping parameters, OpenMetrics below the text format.
        (
            &["text/plain;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,text/plain;version=0.0.4;q=0.7,*/*;q=0.1"],
            Text,
        ),
        (
            &["application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.9,text/plain;version=0.0.4;q=0.5"],
            OpenMetrics,
        ),
        // q-values: zero refuses, the higher wins, a tie goes to the explicit OpenMetrics.
        (&["application/openmetrics-text;q=0"], Text),
        (&["application/openmetrics-text;q=0.5, text/plain;q=0.9"], Text),
        (&["text/plain;q=0.2, application/openmetrics-text;q=0.3"], OpenMetrics),
        (&["text/plain, application/openmetrics-text"], OpenMetrics),
        (&["application/openmetrics-text;q=0.4", "*/*;q=0.8"], Text),
        (&["text/plain;q=0", "application/openmetrics-text;q=0.01"], OpenMetrics),
        // Several header lines count together.
        (&["text/plain;q=0.1", "application/openmetrics-text"], OpenMetrics),
        // Versions we do not write.
        (&["application/openmetrics-text;version=0.0.1"], Text),
        (&["application/openmetrics-text;version=2.0.0"], Text),
        (&["application/openmetrics-text; version=\"1.0.0\""], OpenMetrics),
        // Case and spacing do not matter.
        (&["  Application/OpenMetrics-Text ; VERSION = 1.0.0 ; Q = 0.9 "], OpenMetrics),
        // Wildcards never ask for OpenMetrics.
        (&["application/*"], Text),
        (&["application/*, text/plain;q=0.1"], Text),
        // Garbage and invalid q-values: the range is ignored, the text format served.
        (&[";;;,,,"], Text),
        (&["application/openmetrics-text;q=abc"], Text),
        (&["application/openmetrics-text;q=2"], Text),
        (&["application/openmetrics-text;q=-1"], Text),
        (&["application/openmetrics-text;q=NaN"], Text),
        (&["application/openmetrics-text;q"], OpenMetrics),
        (&["application/json"], Text),
        (&["\u{0}\u{7f}é;q=0.5"], Text),
        (&["application/openmetrics-textx"], Text),
        (&["application/openmetrics-text/extra"], Text),
    ];
    for (accept, want) in cases {
        assert_eq!(negotiate(accept), *want, "Accept: {accept:?}");
    }
    let long = "text/html;q=0.1,".repeat(10_000) + "application/openmetrics-text";
    assert_eq!(negotiate(&[&long]), OpenMetrics);
}

#[test]
fn content_types_name_the_format_and_version() {
    assert_eq!(Format::OpenMetrics.content_type(), "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert_eq!(Format::Text.content_type(), "text/plain; version=0.0.4; charset=utf-8");
}

fn sample_registry() -> Registry {
    let mut root = new_registry("demo", "1.2.3");
    let reg = root.sub_registry_with_prefix("demo");
    let requests = Counter::<u64>::default();
    requests.inc_by(3);
    reg.register("requests", "Requests served", requests);
    let by_code = Family::<Vec<(String, String)>, Counter>::default();
    by_code.get_or_create(&vec![("code".into(), "a \"quoted\" # value".into())]).inc();
    reg.register("responses", "Responses by code", by_code);
    let depth = Gauge::<i64>::default();
    depth.set(7);
    reg.register("queue_depth", "Jobs waiting", depth);
    let h = Histogram::new([0.1, 1.0]);
    h.observe(0.5);
    reg.register("latency_seconds", "Latency", h);
    root
}

#[test]
fn text_format_names_counters_with_total_and_has_no_eof() {
    let text = render(&sample_registry(), Format::Text);
    for want in [
        "# HELP demo_requests_total Requests served.\n# TYPE demo_requests_total counter\ndemo_requests_total 3\n",
        "# TYPE demo_responses_total counter\ndemo_responses_total{code=\"a \\\"quoted\\\" # value\"} 1\n",
        "# HELP demo_queue_depth Jobs waiting.\n# TYPE demo_queue_depth gauge\ndemo_queue_depth 7\n",
        "# TYPE demo_latency_seconds histogram\n",
        "demo_latency_seconds_bucket{le=\"+Inf\"} 1\n",
        "# TYPE demo_build_info gauge\n",
        "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total ",
        "# TYPE process_resident_memory_bytes gauge\n",
        "# TYPE process_open_fds gauge\n",
        "# TYPE process_max_fds gauge\n",
        "# TYPE process_start_time_seconds gauge\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
    // Every sample follows a TYPE line naming it (or its histogram family).
    let mut family = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            family = rest.split(' ').next().unwrap().to_string();
        } else if !line.starts_with('#') {
            assert!(line.starts_with(&family), "{line} outside its family {family}");
        }
    }
}

#[test]
fn openmetrics_format_is_prometheus_clients_own_with_eof() {
    let om = render(&sample_registry(), Format::OpenMetrics);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE demo_requests counter\ndemo_requests_total 3\n"), "{om}");
}

#[test]
fn build_info_carries_version_commit_and_rustc() {
    let text = render(&sample_registry(), Format::Text);
    let line = text.lines().find(|l| l.starts_with("demo_build_info{")).expect("build_info sample");
    assert!(line.contains("version=\"1.2.3\""), "{line}");
    assert!(line.contains(&format!("commit=\"{GIT_COMMIT}\"")), "{line}");
    let rustc = RUSTC_VERSION.trim_start_matches("rustc ");
    assert!(line.contains(&format!("rustc=\"{rustc}\"")), "{line}");
    assert!(line.ends_with("} 1"), "{line}");
    assert!(!RUSTC_VERSION.is_empty() && RUSTC_VERSION != "unknown", "{RUSTC_VERSION}");
}

#[test]
fn translation_handles_info_unknown_created_unit_and_exemplars() {
    let om = "# HELP a Info family\n# TYPE a info\na_info{v=\"1\"} 1\n\
              # HELP b Untyped\n# TYPE b unknown\nb 2\n\
              # HELP c Counter with unit\n# TYPE c_seconds counter\n# UNIT c_seconds seconds\n\
              c_seconds_total 1.5 # {trace_id=\"x # y\"} 1.0 123\nc_seconds_created 1700000000.0\n\
              # EOF\n";
    assert_eq!(
        openmetrics_to_text(om),
        "# HELP a_info Info family\n# TYPE a_info gauge\na_info{v=\"1\"} 1\n\
         # HELP b Untyped\n# TYPE b untyped\nb 2\n\
         # HELP c_seconds_total Counter with unit\n# TYPE c_seconds_total counter\nc_seconds_total 1.5\n"
    );
}

#[test]
fn proc_files_parse() {
    // The command name may hold spaces and parentheses.
    let stat = "4242 (we ird) (x) S 1 4242 4242 0 -1 4194560 1095 0 0 0 250 75 0 0 20 0 9 0 123456 \
                21954560 1200 18446744073709551615 1 1 0 0 0 0 0 4096 17003 0 0 0 17 1 0 0 0 0 0";
    assert_eq!(parse_stat(stat), Some(Stat { utime: 250, stime: 75, starttime: 123456, vsize: 21954560 }));
    assert_eq!(parse_stat("4242 (truncated"), None);
    assert_eq!(parse_stat("4242 (x) S 1 2"), None);
    assert_eq!(parse_resident_bytes("Name:\tx\nVmRSS:\t    4828 kB\nVmData: 1 kB\n"), Some(4828.0 * 1024.0));
    assert_eq!(parse_resident_bytes("Name:\tx\n"), None);
    assert_eq!(parse_boot_time("cpu  1 2 3\nbtime 1733475000\nprocesses 9\n"), Some(1733475000));
    let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                  Max open files            1024                 524288               files     \n";
    assert_eq!(parse_max_fds(limits), Some(1024.0));
    assert_eq!(parse_max_fds("Max open files            unlimited            unlimited            files\n"), None);
}

#[test]
fn this_process_is_measured() {
    let s = ProcessSnapshot::read();
    assert!(s.resident_bytes.unwrap() > 0.0, "{s:?}");
    assert!(s.open_fds.unwrap() >= 3.0, "{s:?}");
    assert!(s.max_fds.unwrap() >= s.open_fds.unwrap(), "{s:?}");
    assert!(s.cpu_seconds.unwrap() >= 0.0, "{s:?}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let started = s.start_time_seconds.unwrap();
    assert!(started <= now + 1.0 && started > now - 3600.0, "started {started}, now {now}");
}
