//! The sandbox on its own: globals, errors and their locations, and every hostile script
//! of issue 11 (each ends in a clear failure within its limits). `$http` answers come from
//! a fake port here; the real path through the sidecar is `tests/through_sidecar.rs`.
use super::*;
use crate::http::HttpError;
use std::sync::Mutex;

/// Answers `$http` from a table (URL -> status, body) and records what was asked.
#[derive(Default)]
struct FakeHttp {
    seen: Mutex<Vec<HttpRequest>>,
}

impl HttpPort for FakeHttp {
    fn send(&self, req: HttpRequest, done: Box<dyn FnOnce(HttpOutcome) + Send>) {
        self.seen.lock().unwrap().push(req.clone());
        let hop = |status: Option<u16>, error: Option<String>| Hop {
            method: req.method.clone(),
            url: req.url.clone(),
            status,
            error,
            timings: crate::http::Timings { total_ms: 1.5, ..Default::default() },
        };
        let answer = |status: u16, body: &str, ctype: &str| HttpResponse {
            status,
            status_text: "x".into(),
            headers: vec![("content-type".into(), ctype.into())],
            body: Bytes::from(body.to_string()),
            url: req.url.clone(),
            redirect_urls: vec![],
            timings: crate::http::Timings { total_ms: 1.5, ..Default::default() },
        };
        let (result, hops) = match req.url.as_str() {
            "http://origin.test/json" => {
                (Ok(answer(200, r#"{"items":[1,2,3],"name":"x"}"#, "application/json")), vec![hop(Some(200), None)])
            }
            "http://origin.test/echo" => {
                let body = String::from_utf8_lossy(req.body.as_deref().unwrap_or_default()).to_string();
                let headers: Vec<String> =
                    req.headers.iter().map(|(k, v)| format!("{k}={}", v.to_str().unwrap())).collect();
                let text =
                    serde_json::json!({"method": req.method.as_str(), "body": body, "headers": headers}).to_string();
                (Ok(answer(201, &text, "application/json")), vec![hop(Some(201), None)])
            }
            "http://origin.test/slow" => {
                let timeout = req.timeout;
                std::thread::spawn(move || {
                    std::thread::sleep(timeout);
                    done(HttpOutcome { result: Err(HttpError::Timeout(timeout)), hops: vec![] });
                });
                return;
            }
            "http://169.254.169.254/latest/meta-data/" => {
                let e = HttpError::Refused {
                    status: 403,
                    label: "metadata".into(),
                    reason: "a cloud metadata address".into(),
                };
                (Err(e.clone()), vec![hop(Some(403), Some(e.to_string()))])
            }
            _ => (Ok(answer(200, "hello", "text/plain")), vec![hop(Some(200), None)]),
        };
        // Answer from another thread, as the real client does.
        std::thread::spawn(move || done(HttpOutcome { result, hops }));
    }
}

fn check(script: &str) -> Check {
    Check { script: script.into(), timeout: Duration::from_secs(3), ..Check::default() }
}

fn run_with(check: &Check, limits: &Limits) -> (Report, Arc<FakeHttp>) {
    let http = Arc::new(FakeHttp::default());
    (run(check, http.clone(), limits), http)
}

fn run_script(script: &str) -> Report {
    run_with(&check(script), &Limits::default()).0
}

fn error_of(script: &str) -> ScriptError {
    run_script(script).error.unwrap_or_else(|| panic!("{script:?} passed"))
}

fn log_texts(r: &Report) -> Vec<String> {
    r.log.entries().map(|e| e.text.clone()).collect()
}

// --- what a script gets ---

#[test]
fn a_passing_script_has_no_error_and_its_console_is_captured_with_levels() {
    let r = run_script("console.log('hi', {a: 1}, [1, 2]);\nconsole.error('bad', 42);");
    assert_eq!(r.error, None);
    assert_eq!(log_texts(&r), ["hi { a: 1 } [ 1, 2 ]", "bad 42"]);
    let levels: Vec<Level> = r.log.entries().map(|e| e.level).collect();
    assert_eq!(levels, [Level::Log, Level::Error]);
}

#[test]
fn http_get_resolves_with_status_headers_body_and_timings() {
    let (r, http) = run_with(
        &check(
            "const res = await $http.get('http://origin.test/hello', {headers: {'x-a': 'b'}});\n\
             assert.strictEqual(res.statusCode, 200);\n\
             assert.strictEqual(res.body, 'hello');\n\
             assert.strictEqual(res.headers['content-type'], 'text/plain');\n\
             assert.strictEqual(res.timings.total, 1.5);",
        ),
        &Limits::default(),
    );
    assert_eq!(r.error, None);
    let seen = http.seen.lock().unwrap();
    assert_eq!(seen[0].method, Method::GET);
    assert_eq!(seen[0].headers, vec![(HeaderName::from_static("x-a"), HeaderValue::from_static("b"))]);
    assert_eq!(r.requests.len(), 1);
    assert_eq!((r.requests[0].method.as_str(), r.requests[0].status), ("GET", Some(200)));
}

#[test]
fn http_post_sends_json_and_parses_a_json_response() {
    let r = run_script(
        "const res = await $http.post('http://origin.test/echo', {json: {a: 1}, responseType: 'json'});\n\
         assert.strictEqual(res.statusCode, 201);\n\
         assert.deepStrictEqual(res.body, {method: 'POST', body: '{\"a\":1}', headers: ['content-type=application/json']});",
    );
    assert_eq!(r.error, None);
}

#[test]
fn put_delete_and_request_use_their_methods() {
    let r = run_script(
        "for (const [m, p] of [['PUT', $http.put('http://origin.test/echo', {body: 'x'})], \
                              ['DELETE', $http.delete('http://origin.test/echo')], \
                              ['PATCH', $http.request({url: 'http://origin.test/echo', method: 'patch'})]]) {\n\
           const res = await p;\n\
           assert.strictEqual(JSON.parse(res.body).method, m);\n\
         }",
    );
    assert_eq!(r.error, None);
}

#[test]
fn http_options_reach_the_client() {
    let (r, http) = run_with(
        &check("await $http.get('http://origin.test/a', {timeout: 1500, followRedirect: false});"),
        &Limits::default(),
    );
    assert_eq!(r.error, None);
    let seen = http.seen.lock().unwrap();
    assert_eq!(seen[0].timeout, Duration::from_millis(1500));
    assert!(!seen[0].follow_redirects);
}

#[test]
fn bad_http_options_reject_with_a_clear_error() {
    for (script, message) in [
        ("await $http.get('ftp://x/')", "$http GET ftp://x/: unsupported URL \"ftp://x/\" (http:// or https:// only)"),
        ("await $http.request({})", "$http: options.url is required"),
        (
            "await $http.get('http://origin.test/', {headers: {host: 'evil'}})",
            "$http: header \"host\" is set by the runtime",
        ),
        (
            "await $http.get('http://origin.test/', {responseType: 'blob'})",
            "$http: responseType \"blob\" is not supported (text or json)",
        ),
        (
            "await $http.get('http://origin.test/', {timeout: -1})",
            "$http: timeout must be a positive number of milliseconds, not -1",
        ),
        (
            "await $http.get('http://origin.test/', {responseType: 'json'})",
            "response body is not JSON (unexpected token: 'hello')",
        ),
    ] {
        let e = error_of(script);
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Error, message), "{script}");
    }
}

#[test]
fn a_request_timeout_rejects_the_promise() {
    let e = error_of("await $http.get('http://origin.test/slow', {timeout: 50});");
    assert_eq!(e.message, "$http GET http://origin.test/slow: timed out after 50 ms");
}

#[test]
fn env_and_secure_values_are_there_and_frozen() {
    let mut c = check(
        "assert.strictEqual($env.USER_DEFINED_VARIABLES.REGION, 'eu');\n\
         assert.strictEqual($secure.API_KEY, 'k-123');\n\
         $env.USER_DEFINED_VARIABLES.REGION = 'us';\n\
         assert.strictEqual($env.USER_DEFINED_VARIABLES.REGION, 'eu');\n\
         assert.throws(() => { 'use strict'; $secure.API_KEY = 'x'; }, TypeError);",
    );
    c.env.insert("USER_DEFINED_VARIABLES".into(), serde_json::json!({"REGION": "eu"}));
    c.secure.insert("API_KEY".into(), "k-123".into());
    let (r, _) = run_with(&c, &Limits::default());
    assert_eq!(r.error, None);
}

#[test]
fn timers_run_in_order_and_can_be_cleared() {
    let r = run_script(
        "const order = [];\n\
         setTimeout(() => order.push('b'), 20);\n\
         const t = setTimeout(() => order.push('never'), 10);\n\
         setTimeout(() => order.push('a'), 0);\n\
         clearTimeout(t);\n\
         await new Promise((resolve) => setTimeout(resolve, 40));\n\
         assert.deepStrictEqual(order, ['a', 'b']);",
    );
    assert_eq!(r.error, None);
}

#[test]
fn work_left_pending_when_the_script_returns_still_runs() {
    let r = run_script("$http.get('http://origin.test/x').then((res) => console.log('late', res.statusCode));");
    assert_eq!(r.error, None);
    assert_eq!(log_texts(&r), ["late 200"]);
}

// --- assert ---

#[test]
fn asserts_pass_on_what_node_accepts() {
    let r = run_script(
        "assert(1); assert.ok('x'); assert.equal(1, '1'); assert.notEqual(1, 2); assert.strictEqual(NaN, NaN);\n\
         assert.deepEqual({a: [1, {b: 2}]}, {a: ['1', {b: 2}]}); assert.deepStrictEqual(new Map([[1, 2]]), new Map([[1, 2]]));\n\
         assert.match('abc', /b/); assert.throws(() => { throw new TypeError('x'); }, TypeError);\n\
         assert.throws(() => { throw new Error('boom 1'); }, /boom/); assert.throws(() => { throw new Error('m'); }, {message: 'm'});\n\
         await assert.rejects(Promise.reject(new Error('r')), /r/); await assert.rejects(async () => { throw new RangeError('q'); }, RangeError);",
    );
    assert_eq!(r.error, None);
}

#[test]
fn failing_asserts_say_what_and_where() {
    for (script, message, line) in [
        ("assert.equal(1, 2);", "1 == 2", 1),
        ("\nassert.strictEqual(404, 200);", "Expected values to be strictly equal:\n\n404 !== 200", 2),
        ("\n\nassert.ok(0);", "The expression evaluated to a falsy value:\n\n  assert.ok(0)", 3),
        ("assert.notEqual(1, 1);", "1 != 1", 1),
        (
            "assert.deepEqual({a: 1}, {a: 2});",
            "Expected values to be loosely deep-equal:\n\n{ a: 1 }\n\nshould loosely deep-equal\n\n{ a: 2 }",
            1,
        ),
        ("assert.match('abc', /x/);", "The input did not match the regular expression /x/. Input:\n\n'abc'", 1),
        ("assert.throws(() => {});", "Missing expected exception.", 1),
        ("assert.equal(1, 2, 'status should be 2');", "status should be 2", 1),
    ] {
        let e = error_of(script);
        assert_eq!(
            (e.kind, e.name.as_str(), e.message.as_str(), e.line),
            (ErrorKind::Assertion, "AssertionError", message, Some(line)),
            "{script}"
        );
        assert!(e.column.is_some(), "{script}: {e:?}");
    }
}

#[test]
fn a_failed_rejects_is_an_assertion_error() {
    let e = error_of("await assert.rejects(Promise.resolve(1));");
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Assertion, "Missing expected rejection."));
}

#[test]
fn an_assertion_error_carries_node_fields() {
    let r = run_script(
        "try { assert.strictEqual(1, 2); } catch (e) {\n\
           assert.ok(e instanceof assert.AssertionError);\n\
           assert.deepStrictEqual([e.code, e.actual, e.expected, e.operator], ['ERR_ASSERTION', 1, 2, 'strictEqual']);\n\
         }",
    );
    assert_eq!(r.error, None);
}

// --- failures ---

#[test]
fn a_thrown_error_has_its_message_line_and_column() {
    let e = error_of("let x = 1;\n  throw new Error('boom');");
    assert_eq!(
        (e.kind, e.name.as_str(), e.message.as_str(), e.line, e.column),
        (ErrorKind::Error, "Error", "boom", Some(2), Some(13))
    );
    assert_eq!(e.summary(), "Error: boom (check.js:2:13)");
}

#[test]
fn a_huge_error_message_is_cut() {
    let e = error_of("throw new Error('m'.repeat(1000000));");
    assert!(e.message.len() < 4200 && e.message.ends_with("... (995904 more bytes)"), "{}", e.message.len());
}

#[test]
fn a_thrown_non_error_is_reported() {
    let e = error_of("throw 'just a string';");
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Error, "the script threw a non-error value: just a string"));
}

#[test]
fn a_syntax_error_is_located() {
    let e = error_of("const a = 1;\nlet x = ;");
    assert_eq!((e.kind, e.name.as_str(), e.line, e.column), (ErrorKind::Syntax, "SyntaxError", Some(2), Some(9)));
    assert_eq!(e.message, "unexpected token in expression: ';'");
}

#[test]
fn an_unhandled_rejection_fails_the_check() {
    let e = error_of("Promise.reject(new Error('nobody listens'));\nconsole.log('after');");
    assert_eq!(
        (e.kind, e.message.as_str(), e.line),
        (ErrorKind::UnhandledRejection, "unhandled promise rejection: nobody listens", Some(1))
    );
    // Handled later in the same turn is fine.
    let r = run_script("const p = Promise.reject(new Error('x'));\np.catch(() => {});");
    assert_eq!(r.error, None);
}

#[test]
fn a_promise_nothing_settles_is_reported_not_waited_for() {
    let started = Instant::now();
    let e = error_of("await new Promise(() => {});");
    assert_eq!(e.kind, ErrorKind::NeverSettled);
    assert!(started.elapsed() < Duration::from_secs(1), "reported at once, not at the deadline");
}

#[test]
fn a_throwing_timer_callback_fails_the_check() {
    let e = error_of("setTimeout(() => { throw new Error('in a timer'); }, 1);");
    assert_eq!((e.kind, e.message.as_str(), e.line), (ErrorKind::Error, "in a timer", Some(1)));
}

#[test]
fn a_refused_request_rejects_with_the_sidecars_reason() {
    let r = run_script("await $http.get('http://169.254.169.254/latest/meta-data/');");
    let e = r.error.unwrap();
    assert_eq!(
        e.message,
        "$http GET http://169.254.169.254/latest/meta-data/: refused by the sidecar (403 metadata): a cloud metadata address"
    );
    assert_eq!(r.requests[0].status, Some(403));
}

// --- hostile scripts ---

fn timed(limit: Duration, script: &str) -> (ScriptError, Duration) {
    let c = Check { script: script.into(), timeout: limit, ..Check::default() };
    let started = Instant::now();
    let r = run_with(&c, &Limits::default()).0;
    (r.error.unwrap_or_else(|| panic!("{script:?} passed")), started.elapsed())
}

#[test]
fn an_endless_loop_is_stopped_at_the_deadline() {
    let (e, took) = timed(Duration::from_millis(300), "let n = 0;\nwhile (true) { n++; }");
    assert_eq!(e.kind, ErrorKind::Timeout);
    assert_eq!(e.message, "timed out: the check was still running after 0.3 s (busy in the script: an endless loop?)");
    // QuickJS names the function, not the statement, an interrupt stopped: no location
    // is better than a wrong one.
    assert_eq!((e.line, e.column), (None, None));
    assert!(took < Duration::from_millis(1300), "stopped promptly: {took:?}");
}

#[test]
fn an_endless_loop_in_a_callback_or_a_catch_is_stopped_too() {
    for script in [
        "await null; for (;;) {}",
        "setTimeout(() => { for (;;) {} }, 1);",
        "while (true) { try { for (;;) {} } catch (e) { console.log('caught', e); } }",
        "$http.get('http://origin.test/x').then(() => { while (true) {} });",
        // Endless microtasks and timers: the loop never gets idle.
        "function again() { Promise.resolve().then(again); }\nagain();",
        "while (true) { await null; }",
        "function tick() { setTimeout(tick, 0); }\ntick();",
    ] {
        let (e, took) = timed(Duration::from_millis(300), script);
        assert_eq!(e.kind, ErrorKind::Timeout, "{script}: {e:?}");
        assert!(took < Duration::from_millis(1300), "{script}: {took:?}");
    }
}

#[test]
fn waiting_past_the_deadline_is_a_timeout() {
    let (e, _) = timed(Duration::from_millis(200), "await new Promise((r) => setTimeout(r, 60000));");
    assert_eq!(e.kind, ErrorKind::Timeout);
}

#[test]
fn unbounded_allocation_hits_the_heap_limit() {
    let limits = Limits { memory_bytes: 32 * 1024 * 1024, ..Limits::default() };
    let c = check("const keep = [];\nwhile (true) { keep.push(new Array(100000).fill(42)); }");
    let (r, _) = run_with(&c, &limits);
    let e = r.error.unwrap();
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::OutOfMemory, "out of memory"), "{e:?}");
}

#[test]
fn a_huge_string_fails_cleanly() {
    let limits = Limits { memory_bytes: 32 * 1024 * 1024, ..Limits::default() };
    for script in [
        "let s = 'x';\nwhile (true) { s += s; }",
        "'x'.repeat(2 ** 31);",
        "const s = 'y'.repeat(40 * 1024 * 1024); console.log(s.length);",
    ] {
        let (r, _) = run_with(&check(script), &limits);
        let e = r.error.unwrap_or_else(|| panic!("{script} passed"));
        assert!(matches!(e.kind, ErrorKind::OutOfMemory | ErrorKind::Error), "{script}: {e:?}");
        assert!(
            ["out of memory", "string too long", "invalid string length", "invalid repeat count"]
                .iter()
                .any(|m| e.message.contains(m)),
            "{script}: {e:?}"
        );
    }
}

#[test]
fn deep_recursion_is_a_range_error_not_a_crash() {
    let e = error_of("function f() { return f() + 1; }\nf();");
    assert_eq!(
        (e.name.as_str(), e.message.as_str(), e.line),
        ("RangeError", "Maximum call stack size exceeded", Some(1))
    );
}

#[test]
fn a_console_flood_is_bounded() {
    let limits = Limits { log: LogLimits { head: 10, tail: 5, max_line_bytes: 64 }, ..Limits::default() };
    let (r, _) = run_with(
        &check("const x = 'x'.repeat(1000);\nfor (let i = 0; i < 20000; i++) console.log('line', i, x);"),
        &limits,
    );
    assert_eq!(r.error, None);
    let texts = log_texts(&r);
    assert_eq!(texts.len(), 15);
    assert_eq!(r.log.dropped(), 20000 - 15);
    assert!(texts[0].starts_with("line 0 xxx") && texts[0].ends_with("... (943 more bytes)"), "{}", texts[0]);
    assert!(texts[14].starts_with("line 19999 "), "{}", texts[14]);
}

#[test]
fn require_and_import_fail_clearly() {
    let e = error_of("const fs = require('fs');");
    assert!(e.message.starts_with("require(\"fs\") is not available: checks run without modules"), "{e:?}");
    assert_eq!(e.line, Some(1));
    let e = error_of("import fs from 'fs';\nconsole.log(fs);");
    assert_eq!(e.kind, ErrorKind::Syntax);
    assert!(e.message.starts_with("import/export declarations are not available: checks run without modules"), "{e:?}");
    let e = error_of("const m = await import('fs');");
    assert!(e.message.starts_with("import('fs') is not available: checks run without modules"), "{e:?}");
}

#[test]
fn eval_and_function_constructors_reach_nothing_more() {
    let r = run_script(
        "const g = Function('return this')();\n\
         for (const name of ['process', 'require', 'module', 'std', 'os', 'Deno', 'Bun', '__apiRuntimeHost']) {\n\
           assert.strictEqual(typeof g[name], name === 'require' ? 'function' : 'undefined', name);\n\
         }\n\
         assert.strictEqual(eval('typeof process'), 'undefined');\n\
         assert.strictEqual((0, eval)('typeof os'), 'undefined');\n\
         const AsyncFunction = (async () => {}).constructor;\n\
         assert.strictEqual(await new AsyncFunction('return typeof std')(), 'undefined');\n\
         assert.throws(() => new Function('return require(\"child_process\")')(), /not available/);\n\
         const names = Object.getOwnPropertyNames(globalThis).filter((n) => /host|native|sys/i.test(n));\n\
         assert.deepStrictEqual(names, []);",
    );
    assert_eq!(r.error, None);
}

#[test]
fn the_host_api_cannot_be_replaced() {
    let r = run_script(
        "'use strict';\n\
         assert.throws(() => { $http.get = () => 'mine'; }, TypeError);\n\
         assert.throws(() => { globalThis.$http = {}; }, TypeError);\n\
         assert.throws(() => { assert.equal = () => {}; }, TypeError);\n\
         assert.throws(() => { console.log = () => {}; }, TypeError);\n\
         assert.throws(() => { delete globalThis.assert; }, TypeError);",
    );
    assert_eq!(r.error, None);
}

#[test]
fn prototype_pollution_changes_only_what_the_script_sees() {
    let mut c = check(
        "Object.prototype.url = 'http://169.254.169.254/';\n\
         Object.prototype.headers = {'proxy-authorization': 'x'};\n\
         Object.defineProperty(Object.prototype, 'method', {get() { return 'DELETE'; }});\n\
         JSON.stringify = () => '{\"url\":\"http://169.254.169.254/\"}';\n\
         Array.prototype.push = function () { throw new Error('polluted'); };\n\
         Promise.prototype.then = function () { throw new Error('polluted then'); };\n\
         Error.prototype.toString = () => $secure.TOKEN;\n\
         String.prototype.replace = () => 'nothing to redact';\n\
         const res = await $http.get('http://origin.test/ok');\n\
         console.log('token', $secure.TOKEN);\n\
         throw new Error('leaking ' + $secure.TOKEN);",
    );
    c.secure.insert("TOKEN".into(), "tok-SECRET-1".into());
    let (r, http) = run_with(&c, &Limits::default());
    let seen = http.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].url.as_str()),
        ("GET", "http://origin.test/ok"),
        "the request is what the script asked for"
    );
    assert!(seen[0].headers.is_empty(), "{:?}", seen[0].headers);
    let e = r.error.clone().unwrap();
    assert_eq!(e.message, "leaking tok-SECRET-1", "the engine reports the script's own error");
    // Redaction is the host's: everything reported goes through it.
    let result = crate::payload::result_of(&r, &c.secure);
    let text = serde_json::to_string(&result).unwrap();
    assert!(!text.contains("tok-SECRET-1"), "{text}");
    assert!(result.message.contains("leaking [REDACTED]"), "{}", result.message);
    assert_eq!(result.output["log"][0]["text"], "token [REDACTED]");
}

#[test]
fn too_many_requests_are_refused_not_queued_forever() {
    let limits = Limits { max_in_flight: 2, max_requests: 3, ..Limits::default() };
    let (r, http) = run_with(
        &check(
            "const a = [$http.get('http://origin.test/1'), $http.get('http://origin.test/2')];\n\
             await assert.rejects($http.get('http://origin.test/3'), /more than 2 requests in flight/);\n\
             await Promise.all(a);\n\
             await $http.get('http://origin.test/4');\n\
             await assert.rejects($http.get('http://origin.test/5'), /more than 3 requests in one check/);",
        ),
        &limits,
    );
    assert_eq!(r.error, None);
    assert_eq!(http.seen.lock().unwrap().len(), 3);
}

#[test]
fn locate_reads_the_first_frame_in_the_script() {
    assert_eq!(locate("    at f (prelude.js:1:2)\n    at <eval> (check.js:3:8)\n"), Some((3, Some(8))));
    assert_eq!(locate("    at check.js:12:1\n"), Some((12, Some(1))));
    assert_eq!(locate("    at native\n"), None);
}

#[test]
fn the_result_keeps_a_bounded_number_of_request_records() {
    let (r, _) = run_with(
        &check("for (let i = 0; i < 150; i++) await $http.get('http://origin.test/' + 'p'.repeat(1000) + i);"),
        &Limits::default(),
    );
    assert_eq!(r.error, None);
    assert_eq!((r.requests.len(), r.requests_dropped), (MAX_RECORDED_HOPS, 50));
    assert!(r.requests[0].url.ends_with("... (508 more bytes)"), "{}", r.requests[0].url);
}

struct Hello;

impl Extension for Hello {
    fn install<'js>(&self, ctx: &Ctx<'js>) -> rquickjs::Result<()> {
        ctx.globals().set("$hello", Function::new(ctx.clone(), |name: String| format!("hello {name}"))?)
    }
}

#[test]
fn an_extension_adds_globals_beside_the_standard_ones() {
    let c = check(
        "assert.strictEqual($hello('browser'), 'hello browser');\nassert.strictEqual(typeof $http.get, 'function');",
    );
    let r = run_extended(&c, Arc::new(FakeHttp::default()), &Limits::default(), &Hello);
    assert_eq!(r.error, None);
    let r = run_with(&check("$hello('x')"), &Limits::default()).0;
    assert_eq!(r.error.unwrap().message, "$hello is not defined");
}
