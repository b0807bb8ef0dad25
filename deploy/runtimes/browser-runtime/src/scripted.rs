//! Scripted browser checks: the user's JavaScript in the API runtime's engine
//! (`api_runtime::engine`: QuickJS, its limits, `assert`, `console`, `$http`, `$env`,
//! `$secure`), plus `$browser` and `$driver.By` from `browser.js` driving this job's
//! Chromium.
//!
//! The bridge: the engine's only way out is its [`HttpPort`]. `browser.js` turns each
//! `$browser` call into a `$http` request to `http://browser.invalid/v1` (a reserved name
//! that never resolves); [`BrowserPort`] answers those from the DevTools session
//! ([`Driver`]) and hands every other request to the API runtime's sidecar client. A
//! `$browser` call leaves no hop in the result's `requests`.
use crate::check::{self, Load, Observations};
use crate::chromium::Browser;
use api_runtime::engine::{self, Check, Limits};
use api_runtime::http::{HttpOutcome, HttpPort, HttpRequest, HttpResponse, Proxies, ProxyClient};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The JavaScript that defines `$browser`, `$driver` and `$selenium`.
pub const BROWSER_JS: &str = include_str!("browser.js");
/// Where `browser.js` sends its calls.
pub const BRIDGE_HOST: &str = "browser.invalid";
/// Element handles one check may hold.
const MAX_ELEMENTS: usize = 10_000;
/// Screenshots a script may take with `$browser.takeScreenshot()` (the final one is extra).
const MAX_SCRIPT_SCREENSHOTS: usize = 5;
/// How often `waitForAndFindElement` looks again.
const POLL: Duration = Duration::from_millis(100);

/// Finds the first element a locator matches (page JavaScript; `null` when none).
const FINDER: &str = r#"(function (using, value) {
  switch (using) {
    case 'css': return document.querySelector(value);
    case 'id': return document.getElementById(value);
    case 'name': return document.getElementsByName(value)[0] || null;
    case 'className': return document.getElementsByClassName(value)[0] || null;
    case 'tagName': return document.getElementsByTagName(value)[0] || null;
    case 'linkText': return Array.from(document.querySelectorAll('a')).find(a => a.textContent.trim() === value) || null;
    case 'partialLinkText': return Array.from(document.querySelectorAll('a')).find(a => a.textContent.includes(value)) || null;
    case 'xpath': return document.evaluate(value, document, null, XPathResult.FIRST_ORDERED_NODE_TYPE, null).singleNodeValue;
    default: throw new Error('unknown locator ' + using);
  }
})"#;

#[derive(Debug, Deserialize)]
struct Call {
    op: String,
    #[serde(default)]
    args: Vec<Value>,
}

#[derive(Debug, Deserialize, Clone)]
struct Locator {
    using: String,
    value: String,
}

impl Locator {
    fn describe(&self) -> String {
        format!("By.{}({:?})", self.using, self.value)
    }
}

/// A step's failure as the script sees it: an error name and message.
type StepError = (&'static str, String);

/// The browser state the script's calls act on; one call at a time.
pub struct Driver {
    state: tokio::sync::Mutex<State>,
    end_by: Instant,
}

pub struct State {
    pub browser: Browser,
    pub obs: Observations,
    elements: Vec<String>,
    /// Pages loaded by `$browser.get`: url, status, load wall time.
    pub pages: Vec<Value>,
    pub artifacts: Vec<Value>,
    artifact_bytes: usize,
    script_screenshots: usize,
}

impl Driver {
    pub fn new(browser: Browser, end_by: Instant) -> Driver {
        let state = State {
            browser,
            obs: Observations::default(),
            elements: Vec::new(),
            pages: Vec::new(),
            artifacts: Vec::new(),
            artifact_bytes: 0,
            script_screenshots: 0,
        };
        Driver { state: tokio::sync::Mutex::new(state), end_by }
    }

    /// Answers one `browser.js` call: `{"value": ...}` or `{"error": {"name", "message"}}`.
    pub async fn answer(&self, body: &[u8]) -> Value {
        let result = match serde_json::from_slice::<Call>(body) {
            Ok(call) => match tokio::time::timeout_at(self.end_by.into(), self.run(call)).await {
                Ok(r) => r,
                Err(_) => Err(("TimeoutError", "the check's time is up".to_string())),
            },
            Err(e) => Err(("Error", format!("unreadable $browser call: {e}"))),
        };
        match result {
            Ok(value) => json!({ "value": value }),
            Err((name, message)) => json!({ "error": { "name": name, "message": message } }),
        }
    }

    async fn run(&self, call: Call) -> Result<Value, StepError> {
        let mut st = self.state.lock().await;
        let st = &mut *st;
        st.obs.drain(&mut st.browser);
        let arg = |i: usize| call.args.get(i).cloned().unwrap_or(Value::Null);
        let string = |i: usize| arg(i).as_str().map(str::to_string).unwrap_or_default();
        match call.op.as_str() {
            "get" => self.get(st, &string(0)).await,
            "getTitle" => eval(&st.browser, "document.title").await,
            "getCurrentUrl" => eval(&st.browser, "location.href").await,
            "findElement" => {
                let by = locator(&arg(0))?;
                match find(&st.browser, &by).await? {
                    Some(object) => st.handle(object),
                    None => Err(("NoSuchElementError", format!("no element matches {}", by.describe()))),
                }
            }
            "waitForAndFindElement" => {
                let by = locator(&arg(0))?;
                let ms = arg(1).as_f64().filter(|m| m.is_finite() && *m >= 0.0).unwrap_or(5000.0);
                let until = (Instant::now() + Duration::from_secs_f64(ms / 1000.0)).min(self.end_by);
                loop {
                    // A page still navigating answers with an error: not found yet.
                    if let Ok(Some(object)) = find(&st.browser, &by).await {
                        return st.handle(object);
                    }
                    if Instant::now() + POLL > until {
                        return Err((
                            "TimeoutError",
                            format!("no element matched {} within {} ms", by.describe(), ms.round()),
                        ));
                    }
                    tokio::time::sleep(POLL).await;
                    st.obs.drain(&mut st.browser);
                }
            }
            "click" => {
                let object = st.element(&arg(0))?;
                click(&st.browser, &object).await
            }
            "sendKeys" => {
                let object = st.element(&arg(0))?;
                call_on(&st.browser, &object, "function () { this.focus(); }", vec![]).await?;
                st.browser.page("Input.insertText", json!({ "text": string(1) })).await.map_err(step)?;
                Ok(Value::Null)
            }
            "clear" => {
                let object = st.element(&arg(0))?;
                let f = "function () { this.focus(); if ('value' in this) { this.value = ''; \
                         this.dispatchEvent(new Event('input', { bubbles: true })); \
                         this.dispatchEvent(new Event('change', { bubbles: true })); } }";
                call_on(&st.browser, &object, f, vec![]).await
            }
            "getText" => {
                let object = st.element(&arg(0))?;
                call_on(&st.browser, &object, "function () { return this.innerText ?? this.textContent; }", vec![])
                    .await
            }
            "getAttribute" => {
                let object = st.element(&arg(0))?;
                call_on(&st.browser, &object, "function (n) { return this.getAttribute(n); }", vec![arg(1)]).await
            }
            "isDisplayed" => {
                let object = st.element(&arg(0))?;
                let f = "function () { const r = this.getBoundingClientRect(); const s = getComputedStyle(this); \
                         return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none'; }";
                call_on(&st.browser, &object, f, vec![]).await
            }
            "takeScreenshot" => {
                if st.script_screenshots >= MAX_SCRIPT_SCREENSHOTS {
                    return Err(("Error", format!("at most {MAX_SCRIPT_SCREENSHOTS} screenshots per check")));
                }
                st.script_screenshots += 1;
                let name = format!("screenshot-{}.png", st.script_screenshots);
                st.screenshot(&name).await.map(|_| Value::Null).map_err(step)
            }
            other => Err(("Error", format!("unknown $browser call {other:?}"))),
        }
    }

    async fn get(&self, st: &mut State, url: &str) -> Result<Value, StepError> {
        if !check::is_web_url(url) {
            return Err(("Error", format!("$browser.get({url:?}): not an http:// or https:// URL")));
        }
        let started = Instant::now();
        let (load, loader) = check::navigate_and_wait(&mut st.browser, &mut st.obs, url, self.end_by).await;
        let doc = loader.as_deref().and_then(|l| st.obs.document(l)).cloned();
        st.pages.push(json!({
            "url": url,
            "status": doc.as_ref().map(|d| d.status),
            "final_url": doc.as_ref().map(|d| d.url.clone()),
            "load_wall_ms": started.elapsed().as_millis() as u64,
        }));
        st.pages.truncate(check::MAX_ENTRIES);
        match load {
            Load::Loaded => Ok(Value::Null),
            Load::NavigationError(e) => Err(("Error", format!("$browser.get({url}): {e}"))),
            Load::TimedOut => Err(("TimeoutError", format!("$browser.get({url}): the page did not finish loading"))),
        }
    }
}

impl State {
    fn handle(&mut self, object: String) -> Result<Value, StepError> {
        if self.elements.len() >= MAX_ELEMENTS {
            return Err(("Error", format!("more than {MAX_ELEMENTS} elements found in one check")));
        }
        self.elements.push(object);
        Ok(json!(self.elements.len() - 1))
    }

    fn element(&self, handle: &Value) -> Result<String, StepError> {
        handle
            .as_u64()
            .and_then(|i| self.elements.get(i as usize))
            .cloned()
            .ok_or(("Error", "not an element of this check".to_string()))
    }

    /// A screenshot into the artifacts, within what is left of the shared budget.
    pub async fn screenshot(&mut self, name: &str) -> Result<(), String> {
        let left = check::MAX_SCREENSHOT_B64.saturating_sub(self.artifact_bytes);
        let mut shot = check::take_screenshot(&self.browser, left).await?;
        self.artifact_bytes += shot["data"].as_str().map_or(0, str::len);
        shot["name"] = json!(name);
        self.artifacts.push(shot);
        Ok(())
    }
}

fn step(e: String) -> StepError {
    // An element from a page that was replaced since.
    if e.contains("Cannot find context") || e.contains("Could not find object") {
        return ("StaleElementReferenceError", "the element is no longer in the page".into());
    }
    ("Error", e)
}

fn locator(v: &Value) -> Result<Locator, StepError> {
    serde_json::from_value(v.clone())
        .map_err(|_| ("TypeError", "a locator is required, e.g. $driver.By.css(\"#id\")".into()))
}

/// An exception from page JavaScript as one line.
fn exception_text(details: &Value) -> String {
    details
        .pointer("/exception/description")
        .and_then(Value::as_str)
        .or_else(|| details.get("text").and_then(Value::as_str))
        .unwrap_or("exception in the page")
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

async fn eval(browser: &Browser, expression: &str) -> Result<Value, StepError> {
    let r = browser
        .page("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }))
        .await
        .map_err(step)?;
    if let Some(ex) = r.get("exceptionDetails") {
        return Err(("Error", exception_text(ex)));
    }
    Ok(r.pointer("/result/value").cloned().unwrap_or(Value::Null))
}

/// The element's remote object id, or None when nothing matches.
async fn find(browser: &Browser, by: &Locator) -> Result<Option<String>, StepError> {
    let expression = format!("{FINDER}({}, {})", json!(by.using), json!(by.value));
    let r = browser.page("Runtime.evaluate", json!({ "expression": expression })).await.map_err(step)?;
    if let Some(ex) = r.get("exceptionDetails") {
        return Err(("InvalidSelectorError", format!("{}: {}", by.describe(), exception_text(ex))));
    }
    Ok(r.pointer("/result/objectId").and_then(Value::as_str).map(str::to_string))
}

async fn call_on(browser: &Browser, object: &str, function: &str, args: Vec<Value>) -> Result<Value, StepError> {
    let arguments: Vec<Value> = args.into_iter().map(|v| json!({ "value": v })).collect();
    let r = browser
        .page(
            "Runtime.callFunctionOn",
            json!({ "objectId": object, "functionDeclaration": function, "arguments": arguments, "returnByValue": true }),
        )
        .await
        .map_err(step)?;
    if let Some(ex) = r.get("exceptionDetails") {
        return Err(("Error", exception_text(ex)));
    }
    Ok(r.pointer("/result/value").cloned().unwrap_or(Value::Null))
}

/// A real (trusted) left click in the middle of the element, scrolled into view first.
async fn click(browser: &Browser, object: &str) -> Result<Value, StepError> {
    let f = "function () { this.scrollIntoView({ block: 'center', inline: 'center' }); \
             const r = this.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2, r.width, r.height]; }";
    let at = call_on(browser, object, f, vec![]).await?;
    let n = |i: usize| at.get(i).and_then(Value::as_f64).unwrap_or(0.0);
    if n(2) <= 0.0 || n(3) <= 0.0 {
        return Err(("ElementNotInteractableError", "the element has no size (hidden?): cannot click it".into()));
    }
    let (x, y) = (n(0), n(1));
    for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
        let mut params = json!({ "type": kind, "x": x, "y": y });
        if kind != "mouseMoved" {
            params["button"] = json!("left");
            params["clickCount"] = json!(1);
        }
        browser.page("Input.dispatchMouseEvent", params).await.map_err(step)?;
    }
    Ok(Value::Null)
}

/// `$http` for a scripted browser check: `browser.js`'s calls to [`BRIDGE_HOST`] go to
/// the [`Driver`], everything else to the sidecar.
pub struct BrowserPort {
    pub proxy: ProxyClient,
    pub driver: Arc<Driver>,
    pub handle: tokio::runtime::Handle,
}

fn is_bridge(url: &str) -> bool {
    url.parse::<http::Uri>()
        .map(|u| u.scheme_str() == Some("http") && u.host() == Some(BRIDGE_HOST) && u.port().is_none())
        .unwrap_or(false)
}

impl HttpPort for BrowserPort {
    fn send(&self, req: HttpRequest, done: Box<dyn FnOnce(HttpOutcome) + Send>) {
        if !is_bridge(&req.url) {
            return self.proxy.send(req, done);
        }
        let driver = self.driver.clone();
        self.handle.spawn(async move {
            let body = req.body.clone().unwrap_or_default();
            let answer = driver.answer(&body).await;
            let response = HttpResponse {
                status: 200,
                status_text: "OK".into(),
                headers: vec![("content-type".into(), "application/json".into())],
                body: Bytes::from(answer.to_string()),
                url: req.url.clone(),
                redirect_urls: Vec::new(),
                timings: Default::default(),
            };
            done(HttpOutcome { result: Ok(response), hops: Vec::new() });
        });
    }
}

/// What a scripted check leaves: the engine's report and the browser's side.
pub struct Outcome {
    pub report: engine::Report,
    pub output: Value,
}

/// The engine extension: `browser.js` evaluated after the standard globals.
struct BrowserGlobals;

impl engine::Extension for BrowserGlobals {
    fn install<'js>(&self, ctx: &rquickjs::Ctx<'js>) -> rquickjs::Result<()> {
        let mut options = rquickjs::context::EvalOptions::default();
        options.strict = true;
        options.filename = Some("browser.js".into());
        ctx.eval_with_options::<(), _>(BROWSER_JS, options)
    }
}

/// Runs `check` with `$browser` against `browser`; the final screenshot is taken by
/// `end_by`. Chromium is shut down before this returns.
pub async fn run(check: Check, browser: Browser, proxies: Proxies, end_by: Instant) -> Outcome {
    let start_ms = browser.start_ms;
    let driver = Arc::new(Driver::new(browser, end_by));
    let port = Arc::new(BrowserPort {
        proxy: ProxyClient::new(proxies, tokio::runtime::Handle::current()),
        driver: driver.clone(),
        handle: tokio::runtime::Handle::current(),
    });
    let limits = Limits::default();
    let report =
        match tokio::task::spawn_blocking(move || engine::run_extended(&check, port, &limits, &BrowserGlobals)).await {
            Ok(r) => r,
            Err(e) => engine::Report {
                error: Some(engine::ScriptError {
                    kind: engine::ErrorKind::Internal,
                    name: "InternalError".into(),
                    message: format!("the engine stopped: {e}"),
                    line: None,
                    column: None,
                    stack: None,
                }),
                log: api_runtime::log::LogBuffer::new(Default::default(), Instant::now()),
                requests: Vec::new(),
                requests_dropped: 0,
                duration: Duration::ZERO,
            },
        };
    // Calls the engine gave up on end by `end_by`; then the page as the script left it.
    let mut guard = driver.state.lock().await;
    let st = &mut *guard;
    st.obs.drain(&mut st.browser);
    let left = end_by.saturating_duration_since(Instant::now());
    let final_shot = tokio::time::timeout(left, st.screenshot("final.png")).await;
    let mut output = json!({
        "type": "scripted",
        "chromium_start_ms": start_ms,
        "pages": st.pages,
    });
    match final_shot {
        Ok(Ok(())) => {}
        Ok(Err(e)) => output["screenshot_error"] = json!(e),
        Err(_) => output["screenshot_error"] = json!("no final screenshot before the deadline"),
    }
    st.obs.drain(&mut st.browser);
    st.obs.report_into(&mut output);
    output["artifacts"] = json!(st.artifacts);
    st.browser.shutdown().await;
    Outcome { report, output }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bridge_host_is_answered_locally() {
        assert!(is_bridge("http://browser.invalid/v1"));
        assert!(!is_bridge("https://browser.invalid/v1"), "https would need a certificate: not the bridge");
        assert!(!is_bridge("http://browser.invalid:8080/v1"));
        assert!(!is_bridge("http://browser.invalid.example.com/v1"));
        assert!(!is_bridge("http://example.com/browser.invalid"));
    }

    #[test]
    fn locators_are_checked() {
        assert_eq!(locator(&json!({"using": "css", "value": "#q"})).unwrap().describe(), "By.css(\"#q\")");
        assert_eq!(locator(&json!("#q")).unwrap_err().0, "TypeError");
    }

    #[test]
    fn stale_elements_are_named() {
        assert_eq!(
            step("Runtime.callFunctionOn: Cannot find context with specified id".into()).0,
            "StaleElementReferenceError"
        );
        assert_eq!(step("Input.insertText: boom".into()).0, "Error");
    }
}
