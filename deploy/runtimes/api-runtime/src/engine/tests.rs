use super::*;

fn run_script(script: &str) -> Report {
    let check = Check { script: script.into(), timeout: Duration::from_secs(2), ..Check::default() };
    run(&check, Arc::new(NoHttp), &Limits::default())
}

struct NoHttp;
impl HttpPort for NoHttp {
    fn send(&self, _req: HttpRequest, done: Box<dyn FnOnce(HttpOutcome) + Send>) {
        done(HttpOutcome { result: Err(HttpError::Failed("no network in this test".into())), hops: vec![] });
    }
}

#[test]
fn a_failing_assertion_is_located_in_the_script() {
    let e = run_script("\n\nassert.equal(1, 2);").error.unwrap();
    assert_eq!(
        (e.kind, e.name.as_str(), e.message.as_str(), e.line),
        (ErrorKind::Assertion, "AssertionError", "1 == 2", Some(3))
    );
}
