//! The script sandbox: one QuickJS runtime per check, with a heap limit, a stack limit and
//! an interrupt handler holding the check's deadline. The script sees the globals of
//! `prelude.js` (`$http`, `assert`, `console`, `$env`, `$secure`, timers) and nothing of the
//! host: no file system, no process, no module loader, no sockets (`$http` goes through
//! an [`HttpPort`], which in the runtime is the sidecar's proxy).
//!
//! The event loop is ours and single-threaded: run the microtasks, then wait for the next
//! `$http` answer or timer, until the script's promise settled and nothing is pending, or
//! the deadline passed. Everything the script can observe is decided here, so a script
//! that replaces `Promise`, `JSON` or `Object.prototype` members only confuses itself.
use crate::http::{Hop, HttpOutcome, HttpPort, HttpRequest, HttpResponse};
use crate::log::{Level, LogBuffer, LogLimits};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use rquickjs::context::EvalOptions;
use rquickjs::promise::PromiseState;
use rquickjs::{CaughtError, Context, Ctx, Exception, Function, Object, Persistent, Promise, Runtime, Value};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The script's file name in stacks and error locations.
pub const SCRIPT_NAME: &str = "check.js";
const PRELUDE: &str = include_str!("prelude.js");
/// Hops kept in the result (the rest are counted): with the console's bound, a result
/// stays well under the smallest `maxResultBytes` (1 MiB).
pub const MAX_RECORDED_HOPS: usize = 100;
/// Longest URL kept in a hop record.
const MAX_RECORDED_URL: usize = 512;
/// Time the host gets after the deadline to read the error that ended the script.
const REPORT_GRACE: Duration = Duration::from_millis(200);

/// What bounds one check besides its timeout.
#[derive(Clone, Debug)]
pub struct Limits {
    /// QuickJS heap limit (strings, objects, bytecode).
    pub memory_bytes: usize,
    /// QuickJS stack limit (deep recursion ends in a RangeError, not a crash).
    pub stack_bytes: usize,
    /// `$http` requests per check.
    pub max_requests: usize,
    /// `$http` requests in flight at once (each holds up to one response body).
    pub max_in_flight: usize,
    pub log: LogLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 128 * 1024 * 1024,
            stack_bytes: 512 * 1024,
            max_requests: 1000,
            max_in_flight: 8,
            log: LogLimits::default(),
        }
    }
}

/// One check to run.
#[derive(Clone, Debug, Default)]
pub struct Check {
    pub script: String,
    /// `$secure.NAME` values; redacted from everything the runtime reports.
    pub secure: BTreeMap<String, String>,
    /// `$env` (a JSON object: `USER_DEFINED_VARIABLES`, `JOB_ID`, ...).
    pub env: serde_json::Map<String, serde_json::Value>,
    pub timeout: Duration,
}

/// One `$http` hop as the result reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestRecord {
    pub method: String,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it started, ms after the script started.
    pub started_ms: u64,
    pub timings: crate::http::Timings,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub error: Option<ScriptError>,
    pub log: LogBuffer,
    pub requests: Vec<RequestRecord>,
    pub requests_dropped: u64,
    pub duration: Duration,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.error.is_none()
    }
}

/// More globals for the script, installed after the standard ones and before the script
/// runs: how another runtime (the browser runtime's `$browser`) embeds this engine. Its
/// host functions run on the engine's thread and must bound their own waits.
pub trait Extension {
    fn install<'js>(&self, ctx: &Ctx<'js>) -> rquickjs::Result<()>;
}

struct NoExtension;

impl Extension for NoExtension {
    fn install<'js>(&self, _ctx: &Ctx<'js>) -> rquickjs::Result<()> {
        Ok(())
    }
}

/// Runs `check` to its end: passed, failed or timed out. Never panics on script input.
pub fn run(check: &Check, http: Arc<dyn HttpPort>, limits: &Limits) -> Report {
    run_extended(check, http, limits, &NoExtension)
}

/// [`run`] with the globals of `extension` added.
pub fn run_extended(check: &Check, http: Arc<dyn HttpPort>, limits: &Limits, extension: &dyn Extension) -> Report {
    let started = Instant::now();
    let log = Rc::new(RefCell::new(LogBuffer::new(limits.log.clone(), started)));
    let requests = Rc::new(RefCell::new((Vec::new(), 0u64)));
    let error = match sandbox(check, http, limits, extension, started, &log, &requests) {
        Ok(error) => error,
        Err(e) => Some(ScriptError::new(ErrorKind::Internal, "InternalError", format!("cannot start the engine: {e}"))),
    };
    let log = log.borrow().clone();
    let (requests, requests_dropped) = requests.borrow().clone();
    Report { error, log, requests, requests_dropped, duration: started.elapsed() }
}

type Requests = Rc<RefCell<(Vec<RequestRecord>, u64)>>;

fn sandbox(
    check: &Check,
    http: Arc<dyn HttpPort>,
    limits: &Limits,
    extension: &dyn Extension,
    started: Instant,
    log: &Rc<RefCell<LogBuffer>>,
    requests: &Requests,
) -> rquickjs::Result<Option<ScriptError>> {
    let deadline = started + check.timeout;
    let rt = Runtime::new()?;
    rt.set_memory_limit(limits.memory_bytes);
    rt.set_max_stack_size(limits.stack_bytes);
    let budget = Rc::new(Cell::new(deadline));
    let interrupted = Rc::new(Cell::new(false));
    {
        let (budget, interrupted) = (budget.clone(), interrupted.clone());
        rt.set_interrupt_handler(Some(Box::new(move || {
            let stop = Instant::now() >= budget.get();
            if stop {
                interrupted.set(true);
            }
            stop
        })));
    }
    let rejections: Rc<RefCell<Vec<Rejection>>> = Rc::default();
    {
        let rejections = rejections.clone();
        rt.set_host_promise_rejection_tracker(Some(Box::new(move |ctx, promise, reason, handled| {
            let mut list = rejections.borrow_mut();
            if handled {
                list.retain(|r| r.promise.clone().restore(&ctx).map(|p| p != promise).unwrap_or(false));
            } else {
                list.push(Rejection {
                    promise: Persistent::save(&ctx, promise),
                    reason: Persistent::save(&ctx, reason),
                });
            }
        })));
    }
    let context = Context::full(&rt)?;
    let outcome = context.with(|ctx| {
        let mut session = Session {
            ctx: ctx.clone(),
            http,
            limits,
            started,
            deadline,
            budget: budget.clone(),
            interrupted: interrupted.clone(),
            log: log.clone(),
            requests: requests.clone(),
            state: Rc::new(RefCell::new(LoopState::default())),
            rejections: rejections.clone(),
        };
        let outcome = session.run(check, extension);
        // Persistent values must go while their runtime lives.
        session.rejections.borrow_mut().clear();
        session.state.borrow_mut().clear();
        outcome
    });
    drop(context);
    rt.set_interrupt_handler(None);
    rt.set_host_promise_rejection_tracker(None);
    Ok(outcome)
}

struct Rejection {
    promise: Persistent<Value<'static>>,
    reason: Persistent<Value<'static>>,
}

struct Pending<'js> {
    resolve: Function<'js>,
    reject: Function<'js>,
    json: bool,
    method: Method,
    url: String,
}

#[derive(Default)]
struct LoopState<'js> {
    next_id: u64,
    http: HashMap<u64, Pending<'js>>,
    requests_started: usize,
    /// (due, id) -> callback.
    timers: BTreeMap<(Instant, u64), Function<'js>>,
    /// Callbacks that threw: the first one ends the script (Node: an uncaught exception).
    uncaught: Option<Value<'js>>,
}

impl LoopState<'_> {
    fn clear(&mut self) {
        self.http.clear();
        self.timers.clear();
        self.uncaught = None;
    }
}

struct Session<'a, 'js> {
    ctx: Ctx<'js>,
    http: Arc<dyn HttpPort>,
    limits: &'a Limits,
    started: Instant,
    deadline: Instant,
    budget: Rc<Cell<Instant>>,
    interrupted: Rc<Cell<bool>>,
    log: Rc<RefCell<LogBuffer>>,
    requests: Requests,
    state: Rc<RefCell<LoopState<'js>>>,
    rejections: Rc<RefCell<Vec<Rejection>>>,
}

/// Options `$http.request` hands to the host (built by the prelude, checked here).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpSpec {
    method: String,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    timeout: Option<serde_json::Value>,
    follow_redirect: bool,
    response_type: String,
}

/// Request headers the runtime owns: the proxy and the framing are not the script's.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "keep-alive",
];

impl<'js> Session<'_, 'js> {
    fn run(&mut self, check: &Check, extension: &dyn Extension) -> Option<ScriptError> {
        let (tx, rx) = mpsc::channel::<(u64, HttpOutcome)>();
        let tx = Rc::new(tx);
        if let Err(e) = self.install(check, tx).and_then(|()| extension.install(&self.ctx)) {
            let caught = CaughtError::from_error(&self.ctx, e);
            return Some(ScriptError::new(
                ErrorKind::Internal,
                "InternalError",
                format!("cannot set up the host: {caught}"),
            ));
        }
        let mut options = EvalOptions::default();
        options.global = true;
        options.strict = false;
        options.promise = true; // top-level await
        options.backtrace_barrier = true;
        options.filename = Some(SCRIPT_NAME.into());
        let main: Promise<'js> = match self.ctx.eval_with_options(check.script.as_bytes(), options) {
            Ok(p) => p,
            Err(e) => {
                let value = self.caught(e);
                let mut error = self.describe(value, true);
                explain_modules(&mut error, &check.script);
                return Some(error);
            }
        };
        self.event_loop(&main, &rx, &check.script)
    }

    fn caught(&self, e: rquickjs::Error) -> Value<'js> {
        match e {
            rquickjs::Error::Exception => self.ctx.catch(),
            other => Exception::from_message(self.ctx.clone(), &other.to_string())
                .map(|x| x.into_value())
                .unwrap_or_else(|_| Value::new_undefined(self.ctx.clone())),
        }
    }

    fn event_loop(
        &mut self,
        main: &Promise<'js>,
        rx: &mpsc::Receiver<(u64, HttpOutcome)>,
        script: &str,
    ) -> Option<ScriptError> {
        loop {
            while self.ctx.execute_pending_job() {}
            if self.interrupted.get() {
                return Some(self.timeout_error());
            }
            if let Some(v) = self.state.borrow_mut().uncaught.take() {
                return Some(self.describe(v, false));
            }
            match main.state() {
                PromiseState::Rejected => {
                    let reason = main.result::<Value<'js>>().and_then(Result::err);
                    let value =
                        reason.map(|e| self.caught(e)).unwrap_or_else(|| Value::new_undefined(self.ctx.clone()));
                    let mut error = self.describe(value, false);
                    explain_modules(&mut error, script);
                    return Some(error);
                }
                PromiseState::Resolved | PromiseState::Pending => {}
            }
            if let Some(e) = self.unhandled_rejection(main) {
                return Some(e);
            }
            let (waiting_http, next_timer) = {
                let s = self.state.borrow();
                (!s.http.is_empty(), s.timers.keys().next().map(|(due, _)| *due))
            };
            if !waiting_http && next_timer.is_none() {
                return match main.state() {
                    PromiseState::Resolved => None,
                    _ => Some(ScriptError::new(
                        ErrorKind::NeverSettled,
                        "Error",
                        "the script is waiting for a promise that nothing will ever settle (no request or timer is pending)",
                    )),
                };
            }
            let now = Instant::now();
            if now >= self.deadline {
                return Some(self.timeout_error());
            }
            let until = next_timer.map_or(self.deadline, |t| t.min(self.deadline));
            match rx.recv_timeout(until.saturating_duration_since(now)) {
                Ok((id, outcome)) => self.settle_http(id, outcome),
                Err(mpsc::RecvTimeoutError::Timeout) => self.fire_timers(),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Some(ScriptError::new(ErrorKind::Internal, "InternalError", "the HTTP client went away"))
                }
            }
        }
    }

    /// A rejection nothing handled, once the microtasks ran (Node reports it then too).
    fn unhandled_rejection(&self, main: &Promise<'js>) -> Option<ScriptError> {
        let reason = {
            let list = self.rejections.borrow();
            let mut found = None;
            for r in list.iter() {
                let Ok(p) = r.promise.clone().restore(&self.ctx) else { continue };
                if &p == main.as_value() {
                    continue;
                }
                found = r.reason.clone().restore(&self.ctx).ok();
                break;
            }
            found
        }?;
        let mut e = self.describe(reason, false);
        if e.kind == ErrorKind::Error || e.kind == ErrorKind::Assertion {
            e.message = format!("unhandled promise rejection: {}", e.message);
            if e.kind == ErrorKind::Error {
                e.kind = ErrorKind::UnhandledRejection;
            }
        }
        Some(e)
    }

    fn timeout_error(&self) -> ScriptError {
        let secs = self.deadline.saturating_duration_since(self.started).as_secs_f64();
        let mut e = ScriptError::new(
            ErrorKind::Timeout,
            "TimeoutError",
            format!("timed out: the check was still running after {secs:.1} s"),
        );
        if self.state.borrow().http.is_empty() {
            e.message.push_str(" (busy in the script: an endless loop?)");
        } else {
            e.message.push_str(" (waiting for $http answers)");
        }
        e
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        loop {
            let due = {
                let mut s = self.state.borrow_mut();
                let key = s.timers.keys().next().copied().filter(|(due, _)| *due <= now);
                key.and_then(|k| s.timers.remove(&k))
            };
            let Some(callback) = due else { break };
            if let Err(e) = callback.call::<_, ()>(()) {
                let v = self.caught(e);
                let mut s = self.state.borrow_mut();
                if s.uncaught.is_none() {
                    s.uncaught = Some(v);
                }
                break;
            }
            while self.ctx.execute_pending_job() {}
        }
    }

    fn settle_http(&mut self, id: u64, outcome: HttpOutcome) {
        let Some(p) = self.state.borrow_mut().http.remove(&id) else { return };
        self.record_hops(&outcome.hops);
        let settled = match outcome.result {
            Ok(resp) => match self.response_object(&resp, p.json) {
                Ok(obj) => p.resolve.call::<_, ()>((obj,)),
                Err(message) => self.reject_with(&p, &message),
            },
            Err(e) => self.reject_with(&p, &format!("$http {} {}: {e}", p.method, p.url)),
        };
        if let Err(e) = settled {
            // Out of memory building the answer, or the interrupt: the loop sees it next.
            let v = self.caught(e);
            let mut s = self.state.borrow_mut();
            if s.uncaught.is_none() && !self.interrupted.get() {
                s.uncaught = Some(v);
            }
        }
    }

    fn reject_with(&self, p: &Pending<'js>, message: &str) -> rquickjs::Result<()> {
        let err = Exception::from_message(self.ctx.clone(), message)?;
        p.reject.call::<_, ()>((err,))
    }

    fn record_hops(&self, hops: &[Hop]) {
        let started_ms = self.started.elapsed().as_millis() as u64;
        let mut r = self.requests.borrow_mut();
        for hop in hops {
            if r.0.len() >= MAX_RECORDED_HOPS {
                r.1 += 1;
                continue;
            }
            let started_ms = started_ms.saturating_sub(hop.timings.total_ms as u64);
            r.0.push(RequestRecord {
                method: hop.method.to_string(),
                url: crate::log::truncate(&hop.url, MAX_RECORDED_URL),
                status: hop.status,
                error: hop.error.clone(),
                started_ms,
                timings: hop.timings.clone(),
            });
        }
    }

    fn response_object(&self, resp: &HttpResponse, json: bool) -> Result<Object<'js>, String> {
        let build = || -> rquickjs::Result<Result<Object<'js>, String>> {
            let ctx = &self.ctx;
            let obj = Object::new(ctx.clone())?;
            obj.set("statusCode", resp.status)?;
            obj.set("status", resp.status)?;
            obj.set("statusMessage", resp.status_text.as_str())?;
            obj.set("ok", (200..300).contains(&resp.status))?;
            obj.set("url", resp.url.as_str())?;
            obj.set("redirectUrls", resp.redirect_urls.clone())?;
            let headers = Object::new(ctx.clone())?;
            for (k, v) in &resp.headers {
                headers.set(k.as_str(), v.as_str())?;
            }
            obj.set("headers", headers)?;
            let text = String::from_utf8_lossy(&resp.body);
            if json {
                match ctx.json_parse(text.as_bytes().to_vec()) {
                    Ok(v) => obj.set("body", v)?,
                    Err(rquickjs::Error::Exception) => {
                        let e = ctx.catch();
                        let why = e.as_exception().and_then(|x| x.message()).unwrap_or_default();
                        return Ok(Err(format!("response body is not JSON ({why})")));
                    }
                    Err(e) => return Err(e),
                }
            } else {
                obj.set("body", text.as_ref())?;
            }
            let t = &resp.timings;
            let timings = Object::new(ctx.clone())?;
            timings.set("connect", t.connect_ms)?;
            if let Some(v) = t.tunnel_ms {
                timings.set("tunnel", v)?;
            }
            if let Some(v) = t.tls_ms {
                timings.set("tls", v)?;
            }
            timings.set("wait", t.wait_ms)?;
            timings.set("download", t.download_ms)?;
            timings.set("total", t.total_ms)?;
            obj.set("timings", timings)?;
            Ok(Ok(obj))
        };
        match build() {
            Ok(r) => r,
            Err(e) => Err(format!("cannot hand the response to the script: {e}")),
        }
    }

    /// The prelude's globals over the host functions, `$env` and `$secure`.
    fn install(&self, check: &Check, tx: Rc<mpsc::Sender<(u64, HttpOutcome)>>) -> rquickjs::Result<()> {
        let ctx = self.ctx.clone();
        let env = ctx.json_parse(serde_json::Value::Object(check.env.clone()).to_string())?;
        let secure = Object::new(ctx.clone())?;
        for (k, v) in &check.secure {
            secure.set(k.as_str(), v.as_str())?;
        }
        let fns = Object::new(ctx.clone())?;

        let log = self.log.clone();
        fns.set(
            "log",
            Function::new(ctx.clone(), move |level: String, text: String| {
                log.borrow_mut().push(Level::parse(&level), &text);
            })?,
        )?;

        let state = self.state.clone();
        fns.set(
            "setTimeout",
            Function::new(ctx.clone(), move |callback: Function<'js>, ms: f64| -> u64 {
                let mut s = state.borrow_mut();
                s.next_id += 1;
                let id = s.next_id;
                let delay = Duration::from_secs_f64((ms.max(0.0) / 1000.0).min(86_400.0));
                s.timers.insert((Instant::now() + delay, id), callback);
                id
            })?,
        )?;
        let state = self.state.clone();
        fns.set(
            "clearTimeout",
            Function::new(ctx.clone(), move |id: f64| {
                state.borrow_mut().timers.retain(|(_, t), _| *t as f64 != id);
            })?,
        )?;

        let state = self.state.clone();
        let port = self.http.clone();
        let limits = self.limits.clone();
        let deadline = self.deadline;
        fns.set(
            "http",
            Function::new(ctx.clone(), move |ctx: Ctx<'js>, spec: String| -> rquickjs::Result<Promise<'js>> {
                let (promise, resolve, reject) = ctx.promise()?;
                let request = match parse_spec(&spec, deadline) {
                    Ok(r) => r,
                    Err(message) => {
                        let e = Exception::from_message(ctx.clone(), &message)?;
                        reject.call::<_, ()>((e,))?;
                        return Ok(promise);
                    }
                };
                let mut s = state.borrow_mut();
                let refuse = if s.requests_started >= limits.max_requests {
                    Some(format!("$http: more than {} requests in one check", limits.max_requests))
                } else if s.http.len() >= limits.max_in_flight {
                    Some(format!("$http: more than {} requests in flight at once", limits.max_in_flight))
                } else {
                    None
                };
                if let Some(message) = refuse {
                    drop(s);
                    let e = Exception::from_message(ctx.clone(), &message)?;
                    reject.call::<_, ()>((e,))?;
                    return Ok(promise);
                }
                s.requests_started += 1;
                s.next_id += 1;
                let id = s.next_id;
                s.http.insert(
                    id,
                    Pending {
                        resolve,
                        reject,
                        json: request.1,
                        method: request.0.method.clone(),
                        url: request.0.url.clone(),
                    },
                );
                drop(s);
                let tx = (*tx).clone();
                port.send(
                    request.0,
                    Box::new(move |outcome| {
                        let _ = tx.send((id, outcome));
                    }),
                );
                Ok(promise)
            })?,
        )?;

        let prelude: Function<'js> = {
            let mut options = EvalOptions::default();
            options.strict = true;
            options.filename = Some("prelude.js".into());
            self.ctx.eval_with_options(PRELUDE, options)?
        };
        prelude.call::<_, ()>((fns, env, secure))?;
        Ok(())
    }

    /// Turns what the script threw into a [`ScriptError`], locating it in the script.
    /// Reading it may run script code (getters): that runs under a short budget.
    fn describe(&self, value: Value<'js>, at_parse: bool) -> ScriptError {
        if self.interrupted.get() {
            // Where an interrupt struck is not known (QuickJS reports the function's start).
            return self.timeout_error();
        }
        self.budget.set(Instant::now() + REPORT_GRACE);
        let mut e = describe_value(&value);
        if at_parse && e.name == "SyntaxError" {
            e.kind = ErrorKind::Syntax;
        }
        e
    }
}

fn parse_spec(spec: &str, deadline: Instant) -> Result<(HttpRequest, bool), String> {
    let s: HttpSpec = serde_json::from_str(spec).map_err(|e| format!("$http: invalid options: {e}"))?;
    let url = s.url.filter(|u| !u.is_empty()).ok_or("$http: options.url is required")?;
    crate::http::parse_url(&url).map_err(|e| format!("$http {} {url}: {e}", s.method))?;
    let method =
        Method::from_bytes(s.method.as_bytes()).map_err(|_| format!("$http: invalid method {:?}", s.method))?;
    let json = match s.response_type.as_str() {
        "text" => false,
        "json" => true,
        other => return Err(format!("$http: responseType {other:?} is not supported (text or json)")),
    };
    let mut headers = Vec::new();
    for (k, v) in &s.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("$http: invalid header name {k:?}"))?;
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(format!("$http: header {k:?} is set by the runtime"));
        }
        let value = HeaderValue::from_str(v).map_err(|_| format!("$http: invalid value for header {k:?}"))?;
        headers.push((name, value));
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let timeout = match s.timeout {
        None | Some(serde_json::Value::Null) => left,
        Some(serde_json::Value::Number(n)) => match n.as_f64() {
            Some(ms) if ms > 0.0 && ms.is_finite() => Duration::from_secs_f64(ms / 1000.0).min(left),
            _ => return Err(format!("$http: timeout must be a positive number of milliseconds, not {n}")),
        },
        Some(other) => return Err(format!("$http: timeout must be a number of milliseconds, not {other}")),
    };
    let request = HttpRequest {
        method,
        url,
        headers,
        body: s.body.map(Bytes::from),
        timeout,
        follow_redirects: s.follow_redirect,
    };
    Ok((request, json))
}

mod error;
use error::{describe_value, explain_modules};
pub use error::{locate, ErrorKind, ScriptError};

#[cfg(test)]
mod tests;
