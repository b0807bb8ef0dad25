use super::*;
use std::sync::{Arc, Mutex};
use tracing_subscriber::layer::SubscriberExt;

/// A writer the test reads back.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The lines `f` logs.
fn raw_lines(f: impl FnOnce()) -> Vec<String> {
    let buf = Buffer::default();
    let out = buf.clone();
    let subscriber = tracing_subscriber::registry().with(json_layer(move || out.clone()));
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    text.lines().map(str::to_string).collect()
}

/// The lines `f` logs, each parsed, with its keys in written order.
fn lines(f: impl FnOnce()) -> Vec<(Vec<String>, serde_json::Map<String, Value>)> {
    raw_lines(f)
        .iter()
        .map(|l| {
            let obj: serde_json::Map<String, Value> = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            // serde_json's Map sorts keys: read the written order from the raw line.
            let mut keys: Vec<(usize, String)> =
                obj.keys().map(|k| (l.find(&format!("\"{k}\":")).unwrap(), k.clone())).collect();
            keys.sort();
            (keys.into_iter().map(|(_, k)| k).collect(), obj)
        })
        .collect()
}

#[test]
fn flat_fixed_keys_first_then_job_id_then_span_and_event_fields_once() {
    let got = lines(|| {
        let outer = tracing::error_span!("job", job_id = "j-1", attempt = 2u64);
        let _o = outer.enter();
        let inner = tracing::info_span!("conn", listener = "proxy", attempt = 3u64, peer = %"10.0.0.7:5");
        let _i = inner.enter();
        tracing::warn!(bytes = 42u64, ok = true, ratio = 0.5, "relay {} done", "x");
    });
    assert_eq!(got.len(), 1);
    let (keys, obj) = &got[0];
    assert_eq!(
        keys,
        &["timestamp", "level", "target", "message", "job_id", "attempt", "listener", "peer", "bytes", "ok", "ratio"]
    );
    assert_eq!(obj["level"], "WARN");
    assert_eq!(obj["target"], "common::logs::tests");
    assert_eq!(obj["message"], "relay x done");
    assert_eq!(obj["job_id"], "j-1");
    assert_eq!(obj["attempt"], 3, "the inner span's value wins");
    assert_eq!(obj["peer"], "10.0.0.7:5");
    assert_eq!((obj["bytes"].clone(), obj["ok"].clone(), obj["ratio"].clone()), (42.into(), true.into(), 0.5.into()));
    let ts = obj["timestamp"].as_str().unwrap();
    assert!(ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    assert!(!obj.contains_key("span") && !obj.contains_key("spans") && !obj.contains_key("fields"), "{obj:?}");
}

#[test]
fn a_line_outside_spans_has_the_fixed_keys_and_collisions_are_renamed() {
    let got = lines(|| {
        tracing::info!(target: "custom::target", level_hint = "x", "plain");
        tracing::error!(message_count = 1, target_host = "h", "with {}", "args");
        let span = tracing::info_span!("s", target = "example.com:443");
        let _e = span.enter();
        tracing::info!(timestamp = 5, "renamed");
        tracing::info!(error = %std::io::Error::other("boom"), "display");
    });
    assert_eq!(got[0].0, ["timestamp", "level", "target", "message", "level_hint"]);
    assert_eq!(got[0].1["target"], "custom::target");
    assert_eq!(got[1].1["message"], "with args");
    assert_eq!(got[2].1["target"], "common::logs::tests");
    assert_eq!(got[2].1["field.target"], "example.com:443");
    assert_eq!(got[2].1["field.timestamp"], 5);
    assert_eq!(got[3].1["error"], "boom");
    // No message at all: the key is still there.
    let got = lines(|| tracing::info!(n = 1));
    assert_eq!(got[0].1["message"], "");
}

#[test]
fn lines_are_checked_against_the_shape() {
    let good = r#"{"timestamp":"t","level":"INFO","target":"x","message":"m","job_id":"j","n":1}"#;
    assert_eq!(check_line(good).unwrap()["n"], 1);
    for bad in [
        "not json",
        "[1]",
        r#"{"level":"INFO","timestamp":"t","target":"x","message":"m"}"#,
        r#"{"timestamp":"t","level":"INFO","message":"m"}"#,
        r#"{"timestamp":"t","level":"INFO","target":"x","message":"m","n":1,"job_id":"j"}"#,
        r#"{"timestamp":"t","level":"INFO","target":"x","message":"m","span":{"job_id":"j"}}"#,
        r#"{"timestamp":"t","level":"INFO","target":"x","message":"m","admin":"Some(127.0.0.1:1)"}"#,
        r#"{"timestamp":"t","level":"INFO","target":"x","message":"m","ingress":"None"}"#,
        r#"{"timestamp":"t","level":"INFO","target":"x","message":1}"#,
    ] {
        assert!(check_line(bad).is_err(), "{bad}");
    }
    // What the layer writes passes.
    let written = raw_lines(|| {
        let span = tracing::info_span!("conn", job_id = "j", listener = "proxy");
        let _e = span.enter();
        tracing::info!(admin = Some(1u64), absent = None::<u64>, "x");
    });
    assert_eq!(written.len(), 1);
    let obj = check_line(&written[0]).unwrap();
    assert_eq!((obj["admin"].clone(), obj.contains_key("absent")), (1.into(), false));
}
