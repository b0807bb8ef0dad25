//! The simple browser check: load one URL, wait for its load event, report the main
//! document's status, navigation timings, console errors, failed requests and a
//! screenshot. What the page did is read from DevTools events by [`Observations`] (pure,
//! unit-tested); [`run`] is the I/O around it.
use crate::cdp::Event;
use crate::chromium::Browser;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Entries kept per list (console errors, failed requests); the rest are counted.
pub const MAX_ENTRIES: usize = 50;
/// Characters kept of one console message or URL.
pub const MAX_TEXT: usize = 512;
/// Largest screenshot artifact, base64 bytes. The job manager's `maxResultBytes` is at
/// least 1 MiB (its default); this leaves room for everything else in the result
/// (at most ~100 KiB of bounded lists).
pub const MAX_SCREENSHOT_B64: usize = 640 * 1024;
/// Requests remembered for URL look-ups (a page can make many).
const MAX_TRACKED_REQUESTS: usize = 10_000;

/// The job payload: `{"type":"simple","url":"https://..."}` or
/// `{"type":"scripted","script":"...","secure":{...}}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Payload {
    Simple {
        url: String,
        /// Take a screenshot (default true).
        #[serde(default = "yes")]
        screenshot: bool,
    },
    /// The user's JavaScript, run by the API runtime's engine with `$browser`.
    Scripted {
        script: String,
        #[serde(default)]
        secure: std::collections::BTreeMap<String, String>,
    },
}

fn yes() -> bool {
    true
}

/// An `http://` or `https://` URL (what a check may load).
pub fn is_web_url(url: &str) -> bool {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    matches!(scheme.as_deref(), Some("http" | "https"))
}

impl Payload {
    /// Reads and validates a payload; the error says what is wrong.
    pub fn parse(v: &Value) -> Result<Payload, String> {
        let p: Payload =
            serde_json::from_value(v.clone()).map_err(|e| format!("invalid browser check payload: {e}"))?;
        if let Payload::Simple { url, .. } = &p {
            if !is_web_url(url) {
                return Err(format!("invalid browser check payload: url {url:?} is not an http:// or https:// URL"));
            }
        }
        Ok(p)
    }
}

/// The main document's answer (the last hop of a redirect chain).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub url: String,
    pub status: u16,
    pub status_text: String,
    /// The sidecar's refusal label (`x-sidecar-error`), when it answered itself.
    pub sidecar_error: Option<String>,
}

/// What the page did, from DevTools events.
#[derive(Debug, Default)]
pub struct Observations {
    /// Document responses by request id (the navigation's request id is its loader id).
    documents: HashMap<String, Document>,
    /// Redirect hops by request id: (url, status).
    redirects: HashMap<String, Vec<(String, u16)>>,
    urls: HashMap<String, String>,
    in_flight: HashSet<String>,
    /// Lifecycle events seen: (loader id, name), e.g. "load", "DOMContentLoaded".
    lifecycle: HashSet<(String, String)>,
    pub console_errors: Vec<Value>,
    pub console_errors_dropped: usize,
    pub failed_requests: Vec<Value>,
    pub failed_requests_dropped: usize,
}

fn clip(s: &str) -> String {
    if s.chars().count() <= MAX_TEXT {
        return s.to_string();
    }
    let mut out: String = s.chars().take(MAX_TEXT).collect();
    out.push('…');
    out
}

fn push_bounded(list: &mut Vec<Value>, dropped: &mut usize, v: Value) {
    if list.len() < MAX_ENTRIES {
        list.push(v);
    } else {
        *dropped += 1;
    }
}

/// A console argument as the console would print it.
fn remote_object_text(o: &Value) -> String {
    match o.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(v) if !v.is_null() => v.to_string(),
        _ => o
            .get("description")
            .or_else(|| o.get("unserializableValue"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| o.get("type").and_then(Value::as_str).unwrap_or("?"))
            .to_string(),
    }
}

impl Observations {
    /// Applies one event of the page's session.
    pub fn apply(&mut self, ev: &Event) {
        let p = &ev.params;
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        match ev.method.as_str() {
            "Network.requestWillBeSent" => {
                let id = s(p, "requestId");
                if let Some(r) = p.get("redirectResponse") {
                    let status = r.get("status").and_then(Value::as_u64).unwrap_or(0) as u16;
                    self.redirects.entry(id.clone()).or_default().push((clip(&s(r, "url")), status));
                }
                if self.urls.len() < MAX_TRACKED_REQUESTS || self.urls.contains_key(&id) {
                    self.urls.insert(id.clone(), s(&p["request"], "url"));
                    self.in_flight.insert(id);
                }
            }
            "Network.responseReceived" => {
                let id = s(p, "requestId");
                let r = &p["response"];
                let status = r.get("status").and_then(Value::as_u64).unwrap_or(0) as u16;
                if p.get("type").and_then(Value::as_str) == Some("Document") {
                    let sidecar_error = r.get("headers").and_then(|h| {
                        h.as_object()?.iter().find_map(|(k, v)| {
                            k.eq_ignore_ascii_case(common::headers::PROXY_ERROR)
                                .then(|| v.as_str().map(str::to_string))?
                        })
                    });
                    self.documents.insert(
                        id.clone(),
                        Document { url: s(r, "url"), status, status_text: s(r, "statusText"), sidecar_error },
                    );
                }
                if status >= 400 && p.get("type").and_then(Value::as_str) != Some("Document") {
                    let entry = json!({ "url": clip(&s(r, "url")), "status": status, "type": s(p, "type") });
                    push_bounded(&mut self.failed_requests, &mut self.failed_requests_dropped, entry);
                }
            }
            "Network.loadingFinished" => {
                self.in_flight.remove(&s(p, "requestId"));
            }
            "Network.loadingFailed" => {
                let id = s(p, "requestId");
                self.in_flight.remove(&id);
                let url = self.urls.get(&id).cloned().unwrap_or_default();
                let mut entry = json!({ "url": clip(&url), "error": s(p, "errorText"), "type": s(p, "type") });
                if p.get("canceled").and_then(Value::as_bool) == Some(true) {
                    entry["canceled"] = json!(true);
                }
                if let Some(b) = p.get("blockedReason").and_then(Value::as_str) {
                    entry["blocked_reason"] = json!(b);
                }
                push_bounded(&mut self.failed_requests, &mut self.failed_requests_dropped, entry);
            }
            "Page.lifecycleEvent" => {
                self.lifecycle.insert((s(p, "loaderId"), s(p, "name")));
            }
            "Runtime.consoleAPICalled" if matches!(p.get("type").and_then(Value::as_str), Some("error" | "assert")) => {
                let args = p.get("args").and_then(Value::as_array).cloned().unwrap_or_default();
                let text: Vec<String> = args.iter().map(remote_object_text).collect();
                let mut entry = json!({ "source": "console", "text": clip(&text.join(" ")) });
                if let Some(frame) = p.pointer("/stackTrace/callFrames/0") {
                    entry["url"] = json!(clip(&s(frame, "url")));
                    entry["line"] = json!(frame.get("lineNumber").and_then(Value::as_u64).map(|l| l + 1));
                }
                push_bounded(&mut self.console_errors, &mut self.console_errors_dropped, entry);
            }
            "Runtime.exceptionThrown" => {
                let d = &p["exceptionDetails"];
                let text = d
                    .pointer("/exception/description")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| s(d, "text"));
                let entry = json!({
                    "source": "exception",
                    "text": clip(&text),
                    "url": clip(&s(d, "url")),
                    "line": d.get("lineNumber").and_then(Value::as_u64).map(|l| l + 1),
                    "column": d.get("columnNumber").and_then(Value::as_u64).map(|c| c + 1),
                });
                push_bounded(&mut self.console_errors, &mut self.console_errors_dropped, entry);
            }
            "Log.entryAdded" if p.pointer("/entry/level").and_then(Value::as_str) == Some("error") => {
                let e = &p["entry"];
                let entry = json!({ "source": s(e, "source"), "text": clip(&s(e, "text")), "url": clip(&s(e, "url")) });
                push_bounded(&mut self.console_errors, &mut self.console_errors_dropped, entry);
            }
            _ => {}
        }
    }

    /// Applies the page's events received so far.
    pub fn drain(&mut self, browser: &mut Browser) {
        while let Ok(ev) = browser.events.try_recv() {
            if ev.session.as_deref() == Some(browser.session.as_str()) {
                self.apply(&ev);
            }
        }
    }

    /// Console errors and failed requests (and how many were dropped) into `output`.
    pub fn report_into(&self, output: &mut Value) {
        output["console_errors"] = json!(self.console_errors);
        output["failed_requests"] = json!(self.failed_requests);
        if self.console_errors_dropped > 0 {
            output["console_errors_dropped"] = json!(self.console_errors_dropped);
        }
        if self.failed_requests_dropped > 0 {
            output["failed_requests_dropped"] = json!(self.failed_requests_dropped);
        }
    }

    pub fn document(&self, loader_id: &str) -> Option<&Document> {
        self.documents.get(loader_id)
    }

    pub fn saw(&self, loader_id: &str, name: &str) -> bool {
        self.lifecycle.contains(&(loader_id.to_string(), name.to_string()))
    }

    pub fn redirects(&self, loader_id: &str) -> Vec<Value> {
        self.redirects
            .get(loader_id)
            .map(|hops| hops.iter().map(|(url, status)| json!({ "url": url, "status": status })).collect())
            .unwrap_or_default()
    }

    /// URLs still loading (bounded), for a page that did not finish in time.
    pub fn pending(&self) -> Vec<String> {
        let mut v: Vec<String> = self.in_flight.iter().filter_map(|id| self.urls.get(id)).map(|u| clip(u)).collect();
        v.sort();
        v.truncate(MAX_ENTRIES);
        v
    }
}

/// Navigation timings in milliseconds from a `PerformanceNavigationTiming` entry
/// (`toJSON()`). Phases that did not happen are 0 (a reused connection, DNS done by the
/// proxy); `tls_ms` is null for plain HTTP.
pub fn timings(nav: &Value) -> Value {
    let f = |k: &str| nav.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let span = |a: &str, b: &str| {
        let (a, b) = (f(a), f(b));
        if a > 0.0 && b >= a {
            round(b - a)
        } else {
            0.0
        }
    };
    let tls =
        if f("secureConnectionStart") > 0.0 { json!(span("secureConnectionStart", "connectEnd")) } else { Value::Null };
    json!({
        "redirect_ms": span("redirectStart", "redirectEnd"),
        "dns_ms": span("domainLookupStart", "domainLookupEnd"),
        "connect_ms": span("connectStart", "connectEnd"),
        "tls_ms": tls,
        "ttfb_ms": span("requestStart", "responseStart"),
        "download_ms": span("responseStart", "responseEnd"),
        "dom_content_loaded_ms": round(f("domContentLoadedEventEnd")),
        "load_ms": round(f("loadEventEnd")),
        "transfer_bytes": nav.get("transferSize").and_then(Value::as_u64),
    })
}

fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

/// How the load ended.
#[derive(Debug, PartialEq)]
pub enum Load {
    Loaded,
    /// Chromium's network error, e.g. `net::ERR_CONNECTION_REFUSED`.
    NavigationError(String),
    TimedOut,
}

/// The verdict on a finished load: outcome (true = succeeded) and the message.
pub fn verdict(url: &str, load: &Load, doc: Option<&Document>, timeout: Duration) -> (bool, String) {
    match (load, doc) {
        (Load::TimedOut, _) => {
            (false, format!("timed out: {url} did not finish loading within {}s", timeout.as_secs()))
        }
        (Load::NavigationError(e), _) => (false, format!("loading {url} failed: {e}")),
        (Load::Loaded, None) => (false, format!("loading {url} failed: no response for the main document")),
        (Load::Loaded, Some(d)) if (200..400).contains(&d.status) => {
            (true, format!("loaded {} -> {} {}", d.url, d.status, d.status_text).trim_end().to_string())
        }
        (Load::Loaded, Some(d)) => {
            let by = match &d.sidecar_error {
                Some(label) => format!(" (refused or failed at the sidecar: {label})"),
                None => String::new(),
            };
            (false, format!("main document {} answered {} {}{by}", d.url, d.status, d.status_text))
        }
    }
}

/// Everything gathered, as the result's `output`.
pub struct Report {
    pub ok: bool,
    pub message: String,
    pub output: Value,
}

/// Drives one simple check in `browser` (its page prepared by [`prepare_page`]). `load_by` is when waiting for the load event
/// stops; `end_by` when everything (the screenshot) must be done.
pub async fn run(
    browser: &mut Browser,
    url: &str,
    screenshot: bool,
    timeout: Duration,
    load_by: Instant,
    end_by: Instant,
) -> Report {
    let mut obs = Observations::default();
    let started = Instant::now();
    let (load, loader_id) = navigate_and_wait(browser, &mut obs, url, load_by).await;
    let wall_ms = started.elapsed().as_millis() as u64;
    let doc = loader_id.as_deref().and_then(|l| obs.document(l)).cloned();
    let (ok, message) = verdict(url, &load, doc.as_ref(), timeout);

    let mut output = json!({
        "type": "simple",
        "url": url,
        "status": doc.as_ref().map(|d| d.status),
        "final_url": doc.as_ref().map(|d| d.url.clone()),
        "redirects": loader_id.as_deref().map(|l| obs.redirects(l)).unwrap_or_default(),
        "page_load_wall_ms": wall_ms,
        "chromium_start_ms": browser.start_ms,
    });
    if let Some(label) = doc.as_ref().and_then(|d| d.sidecar_error.clone()) {
        output["sidecar_error"] = json!(label);
    }
    if load == Load::TimedOut {
        output["timed_out"] = json!(true);
        output["pending_requests"] = json!(obs.pending());
    }
    if load == Load::Loaded {
        match tokio::time::timeout_at(end_by.into(), navigation_timing(browser)).await {
            Ok(Ok(nav)) => output["timings"] = timings(&nav),
            Ok(Err(e)) => output["timings_error"] = json!(e),
            Err(_) => output["timings_error"] = json!("no timings before the deadline"),
        }
    }
    if screenshot {
        match tokio::time::timeout_at(end_by.into(), take_screenshot(browser, MAX_SCREENSHOT_B64)).await {
            Ok(Ok(artifact)) => output["artifacts"] = json!([artifact]),
            Ok(Err(e)) => output["screenshot_error"] = json!(e),
            Err(_) => output["screenshot_error"] = json!("no screenshot before the deadline"),
        }
    }
    // Late events (console errors logged during the load handler) up to now.
    obs.drain(browser);
    obs.report_into(&mut output);
    Report { ok, message, output }
}

/// Turns on the events a check reads and sets the viewport.
pub async fn prepare_page(browser: &Browser, by: Instant) -> Result<(), String> {
    let (w, h) = crate::chromium::WINDOW;
    let setup = async {
        for (method, params) in [
            ("Page.enable", json!({})),
            ("Page.setLifecycleEventsEnabled", json!({ "enabled": true })),
            ("Network.enable", json!({})),
            ("Runtime.enable", json!({})),
            ("Log.enable", json!({})),
            // The viewport itself (a window size would lose the headless window's frame).
            (
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": w, "height": h, "deviceScaleFactor": 1, "mobile": false }),
            ),
        ] {
            browser.page(method, params).await?;
        }
        Ok::<(), String>(())
    };
    match tokio::time::timeout_at(by.into(), setup).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot set up the page: {e}")),
        Err(_) => Err("cannot set up the page: timed out".into()),
    }
}

/// Navigates and feeds events to `obs` until the navigation's load event, a navigation
/// error, or `load_by`. Returns the loader id when the navigation started.
pub async fn navigate_and_wait(
    browser: &mut Browser,
    obs: &mut Observations,
    url: &str,
    load_by: Instant,
) -> (Load, Option<String>) {
    let cdp = browser.cdp.clone();
    let session = browser.session.clone();
    let nav = cdp.call(Some(&session), "Page.navigate", json!({ "url": url }));
    tokio::pin!(nav);
    let deadline = tokio::time::sleep_until(load_by.into());
    tokio::pin!(deadline);
    let mut loader: Option<String> = None;
    let mut nav_done = false;
    loop {
        if let Some(l) = &loader {
            if obs.saw(l, "load") {
                return (Load::Loaded, loader);
            }
        }
        tokio::select! {
            biased;
            answer = &mut nav, if !nav_done => {
                nav_done = true;
                match answer {
                    Err(e) => return (Load::NavigationError(e), None),
                    Ok(a) => {
                        loader = a.get("loaderId").and_then(Value::as_str).map(str::to_string);
                        if let Some(err) = a.get("errorText").and_then(Value::as_str).filter(|e| !e.is_empty()) {
                            return (Load::NavigationError(err.to_string()), loader);
                        }
                        if loader.is_none() {
                            // Same-document navigation (a fragment): nothing to wait for.
                            return (Load::Loaded, None);
                        }
                    }
                }
            }
            ev = browser.events.recv() => match ev {
                Some(ev) if ev.session.as_deref() == Some(session.as_str()) => obs.apply(&ev),
                Some(_) => {}
                None => return (Load::NavigationError("chromium exited during the load".into()), loader),
            },
            _ = &mut deadline => return (Load::TimedOut, loader),
        }
    }
}

/// The page's `PerformanceNavigationTiming`, once its load event has ended.
async fn navigation_timing(browser: &Browser) -> Result<Value, String> {
    const JS: &str = "(async () => { const n = performance.getEntriesByType('navigation')[0]; \
        if (!n) return null; \
        for (let i = 0; i < 100 && n.loadEventEnd === 0; i++) await new Promise(r => setTimeout(r, 10)); \
        return n.toJSON(); })()";
    let r = browser
        .page("Runtime.evaluate", json!({ "expression": JS, "awaitPromise": true, "returnByValue": true }))
        .await?;
    if let Some(ex) = r.get("exceptionDetails") {
        return Err(format!("reading navigation timing: {}", ex.get("text").and_then(Value::as_str).unwrap_or("?")));
    }
    match r.pointer("/result/value") {
        Some(v) if v.is_object() => Ok(v.clone()),
        _ => Err("the page has no navigation timing entry".into()),
    }
}

/// A PNG of the viewport; at half scale when the full one is over the size budget.
pub async fn take_screenshot(browser: &Browser, budget: usize) -> Result<Value, String> {
    let (w, h) = crate::chromium::WINDOW;
    for scale in [1.0, 0.5, 0.25] {
        let mut params = json!({ "format": "png" });
        if scale < 1.0 {
            params["clip"] = json!({ "x": 0, "y": 0, "width": w, "height": h, "scale": scale });
        }
        let r = browser.page("Page.captureScreenshot", params).await?;
        let data = r.get("data").and_then(Value::as_str).ok_or("Page.captureScreenshot: no data")?;
        if data.len() <= budget {
            return Ok(json!({
                "name": "screenshot.png",
                "content_type": "image/png",
                "encoding": "base64",
                "width": (f64::from(w) * scale) as u32,
                "height": (f64::from(h) * scale) as u32,
                "data": data,
            }));
        }
    }
    Err(format!("screenshot over {budget} bytes even at quarter scale: left out"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(method: &str, params: Value) -> Event {
        Event { method: method.into(), session: Some("S".into()), params }
    }

    #[test]
    fn payloads() {
        assert_eq!(
            Payload::parse(&json!({"type": "simple", "url": "https://example.com/"})).unwrap(),
            Payload::Simple { url: "https://example.com/".into(), screenshot: true }
        );
        let e = Payload::parse(&json!({"type": "simple", "url": "file:///etc/passwd"})).unwrap_err();
        assert!(e.contains("not an http:// or https:// URL"), "{e}");
        let e = Payload::parse(&json!({"type": "simple"})).unwrap_err();
        assert!(e.contains("missing field `url`"), "{e}");
        let e = Payload::parse(&json!({"type": "video", "url": "http://x"})).unwrap_err();
        assert!(e.contains("unknown variant `video`"), "{e}");
        let e = Payload::parse(&json!({"type": "simple", "url": "http://x", "extra": 1})).unwrap_err();
        assert!(e.contains("unknown field `extra`"), "{e}");
    }

    #[test]
    fn main_document_redirects_and_failures() {
        let mut o = Observations::default();
        o.apply(&ev(
            "Network.requestWillBeSent",
            json!({"requestId": "L1", "request": {"url": "http://a/old"}, "type": "Document"}),
        ));
        o.apply(&ev(
            "Network.requestWillBeSent",
            json!({"requestId": "L1", "request": {"url": "http://a/new"}, "redirectResponse": {"url": "http://a/old", "status": 301}}),
        ));
        o.apply(&ev(
            "Network.responseReceived",
            json!({"requestId": "L1", "type": "Document", "response": {"url": "http://a/new", "status": 404, "statusText": "Not Found", "headers": {"X-Sidecar-Error": "loopback"}}}),
        ));
        o.apply(&ev("Network.requestWillBeSent", json!({"requestId": "R2", "request": {"url": "http://a/app.js"}})));
        o.apply(&ev("Network.requestWillBeSent", json!({"requestId": "R3", "request": {"url": "http://a/slow.css"}})));
        o.apply(&ev(
            "Network.loadingFailed",
            json!({"requestId": "R2", "errorText": "net::ERR_CONNECTION_REFUSED", "type": "Script"}),
        ));
        o.apply(&ev(
            "Network.responseReceived",
            json!({"requestId": "R4", "type": "Image", "response": {"url": "http://a/x.png", "status": 500}}),
        ));
        o.apply(&ev("Page.lifecycleEvent", json!({"loaderId": "L1", "name": "load"})));

        let d = o.document("L1").unwrap();
        assert_eq!((d.status, d.url.as_str(), d.sidecar_error.as_deref()), (404, "http://a/new", Some("loopback")));
        assert_eq!(o.redirects("L1"), vec![json!({"url": "http://a/old", "status": 301})]);
        assert_eq!(
            o.failed_requests,
            vec![
                json!({"url": "http://a/app.js", "error": "net::ERR_CONNECTION_REFUSED", "type": "Script"}),
                json!({"url": "http://a/x.png", "status": 500, "type": "Image"}),
            ]
        );
        assert!(o.saw("L1", "load") && !o.saw("L2", "load"));
        assert_eq!(o.pending(), vec!["http://a/new".to_string(), "http://a/slow.css".to_string()]);
        let (ok, msg) = verdict("http://a/old", &Load::Loaded, o.document("L1"), Duration::from_secs(5));
        assert!(!ok);
        assert_eq!(
            msg,
            "main document http://a/new answered 404 Not Found (refused or failed at the sidecar: loopback)"
        );
    }

    #[test]
    fn console_errors_exceptions_and_bounds() {
        let mut o = Observations::default();
        o.apply(&ev(
            "Runtime.consoleAPICalled",
            json!({"type": "error", "args": [{"type": "string", "value": "boom"}, {"type": "number", "value": 42}, {"type": "object", "description": "Error: x"}],
                   "stackTrace": {"callFrames": [{"url": "http://a/", "lineNumber": 9}]}}),
        ));
        o.apply(&ev("Runtime.consoleAPICalled", json!({"type": "log", "args": [{"type": "string", "value": "fine"}]})));
        o.apply(&ev(
            "Runtime.exceptionThrown",
            json!({"exceptionDetails": {"text": "Uncaught", "url": "http://a/", "lineNumber": 2, "columnNumber": 4, "exception": {"description": "TypeError: nope"}}}),
        ));
        o.apply(&ev("Log.entryAdded", json!({"entry": {"level": "warning", "source": "network", "text": "meh"}})));
        o.apply(&ev("Log.entryAdded", json!({"entry": {"level": "error", "source": "network", "text": "Failed to load resource", "url": "http://a/x"}})));
        assert_eq!(o.console_errors.len(), 3, "{:?}", o.console_errors);
        assert_eq!(
            o.console_errors[0],
            json!({"source": "console", "text": "boom 42 Error: x", "url": "http://a/", "line": 10})
        );
        assert_eq!(o.console_errors[1]["text"], "TypeError: nope");
        assert_eq!((o.console_errors[1]["line"].as_u64(), o.console_errors[1]["column"].as_u64()), (Some(3), Some(5)));
        assert_eq!(o.console_errors[2]["source"], "network");

        let long = "x".repeat(10_000);
        for _ in 0..(MAX_ENTRIES + 7) {
            o.apply(&ev(
                "Runtime.consoleAPICalled",
                json!({"type": "error", "args": [{"type": "string", "value": long}]}),
            ));
        }
        assert_eq!(o.console_errors.len(), MAX_ENTRIES);
        assert_eq!(o.console_errors_dropped, 10);
        assert_eq!(o.console_errors[3]["text"].as_str().unwrap().chars().count(), MAX_TEXT + 1);
    }

    #[test]
    fn navigation_timings() {
        let nav = json!({
            "startTime": 0, "redirectStart": 0, "redirectEnd": 0,
            "domainLookupStart": 2.0, "domainLookupEnd": 5.5,
            "connectStart": 5.5, "secureConnectionStart": 7.0, "connectEnd": 12.25,
            "requestStart": 12.5, "responseStart": 40.0, "responseEnd": 41.0,
            "domContentLoadedEventEnd": 60.04, "loadEventEnd": 75.0, "transferSize": 900
        });
        assert_eq!(
            timings(&nav),
            json!({"redirect_ms": 0.0, "dns_ms": 3.5, "connect_ms": 6.8, "tls_ms": 5.3, "ttfb_ms": 27.5,
                   "download_ms": 1.0, "dom_content_loaded_ms": 60.0, "load_ms": 75.0, "transfer_bytes": 900})
        );
        let plain = timings(&json!({"connectStart": 1.0, "connectEnd": 2.0, "secureConnectionStart": 0}));
        assert_eq!(plain["tls_ms"], Value::Null);
        assert_eq!(plain["connect_ms"], 1.0);
    }

    #[test]
    fn verdicts() {
        let d = |status| Document { url: "http://a/".into(), status, status_text: "X".into(), sidecar_error: None };
        let t = Duration::from_secs(7);
        assert!(verdict("u", &Load::Loaded, Some(&d(200)), t).0);
        assert!(verdict("u", &Load::Loaded, Some(&d(304)), t).0);
        assert!(!verdict("u", &Load::Loaded, Some(&d(500)), t).0);
        assert!(!verdict("u", &Load::Loaded, None, t).0);
        assert_eq!(
            verdict("http://x/", &Load::TimedOut, None, t),
            (false, "timed out: http://x/ did not finish loading within 7s".into())
        );
        assert_eq!(
            verdict("http://x/", &Load::NavigationError("net::ERR_TUNNEL_CONNECTION_FAILED".into()), None, t),
            (false, "loading http://x/ failed: net::ERR_TUNNEL_CONNECTION_FAILED".into())
        );
    }
}
