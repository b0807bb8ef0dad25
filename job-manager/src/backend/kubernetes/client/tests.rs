use super::*;
use crate::backend::kubernetes::metrics::KubeMetrics;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use tower::ServiceExt;

struct Case {
    name: &'static str,
    method: Method,
    uri: &'static str,
    want: Option<ApiCall>,
}

fn call(resource: Resource, verb: Verb) -> Option<ApiCall> {
    Some(ApiCall { resource, verb })
}

#[test]
fn requests_are_classified_as_rbac_authorizes_them() {
    let cases = [
        Case {
            name: "list",
            method: Method::GET,
            uri: "/apis/jobs.jobmanager.dev/v1/namespaces/ns/jobrecords?labelSelector=a%3Db&limit=1",
            want: call(Resource::JobRecords, Verb::List),
        },
        Case {
            name: "watch",
            method: Method::GET,
            uri: "/api/v1/namespaces/ns/pods?labelSelector=a%3Db&watch=true&timeoutSeconds=290&resourceVersion=7",
            want: call(Resource::Pods, Verb::Watch),
        },
        Case {
            name: "watch=false is a list",
            method: Method::GET,
            uri: "/apis/batch/v1/namespaces/ns/jobs?watch=false",
            want: call(Resource::Jobs, Verb::List),
        },
        Case {
            name: "get",
            method: Method::GET,
            uri: "/apis/jobs.jobmanager.dev/v1/namespaces/ns/jobrecords/jm-job-1",
            want: call(Resource::JobRecords, Verb::Get),
        },
        Case {
            name: "create",
            method: Method::POST,
            uri: "/apis/batch/v1/namespaces/ns/jobs?",
            want: call(Resource::Jobs, Verb::Create),
        },
        Case {
            name: "patch (server-side apply)",
            method: Method::PATCH,
            uri: "/apis/apps/v1/namespaces/ns/deployments/jm-rt-browser?fieldManager=job-manager&force=true",
            want: call(Resource::Deployments, Verb::Patch),
        },
        Case {
            name: "replace status",
            method: Method::PUT,
            uri: "/apis/jobs.jobmanager.dev/v1/namespaces/ns/jobrecords/jm-job-1/status",
            want: call(Resource::JobRecordStatus, Verb::Update),
        },
        Case {
            name: "delete",
            method: Method::DELETE,
            uri: "/apis/batch/v1/namespaces/ns/jobs/jm-job-1",
            want: call(Resource::Jobs, Verb::Delete),
        },
        Case {
            name: "deletecollection",
            method: Method::DELETE,
            uri: "/apis/batch/v1/namespaces/ns/jobs?labelSelector=a%3Db",
            want: call(Resource::Jobs, Verb::DeleteCollection),
        },
        Case {
            name: "lease get",
            method: Method::GET,
            uri: "/apis/coordination.k8s.io/v1/namespaces/ns/leases/runtime-pruning",
            want: call(Resource::Leases, Verb::Get),
        },
        Case {
            name: "lease update",
            method: Method::PUT,
            uri: "/apis/coordination.k8s.io/v1/namespaces/ns/leases/runtime-pruning",
            want: call(Resource::Leases, Verb::Update),
        },
        Case {
            name: "lease patch",
            method: Method::PATCH,
            uri: "/apis/coordination.k8s.io/v1/namespaces/ns/leases/service-setup?fieldManager=x",
            want: call(Resource::Leases, Verb::Patch),
        },
        Case {
            name: "events create",
            method: Method::POST,
            uri: "/apis/events.k8s.io/v1/namespaces/ns/events",
            want: call(Resource::Events, Verb::Create),
        },
        Case {
            name: "core events list (same plural, core group)",
            method: Method::GET,
            uri: "/api/v1/namespaces/ns/events?fieldSelector=involvedObject.kind%3DJob",
            want: call(Resource::CoreEvents, Verb::List),
        },
        Case {
            name: "subresource of another resource is not the resource",
            method: Method::GET,
            uri: "/api/v1/namespaces/ns/pods/p/log",
            want: None,
        },
        Case {
            name: "undeclared resource",
            method: Method::GET,
            uri: "/api/v1/namespaces/ns/secrets/jm-internal",
            want: None,
        },
        Case { name: "a namespace", method: Method::GET, uri: "/api/v1/namespaces/ns", want: None },
        Case { name: "discovery", method: Method::GET, uri: "/apis", want: None },
        Case { name: "version", method: Method::GET, uri: "/version", want: None },
        Case { name: "wrong group", method: Method::GET, uri: "/apis/apps/v1/namespaces/ns/jobs", want: None },
    ];
    for case in cases {
        let uri: Uri = case.uri.parse().unwrap();
        assert_eq!(classify(&case.method, &uri), case.want, "{}: {} {}", case.name, case.method, case.uri);
    }
}

/// A stand-in API server answering with the status in the request's `x-status`.
#[derive(Clone)]
struct Answering;

impl Service<Request<()>> for Answering {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let status: u16 = request.headers()["x-status"].to_str().unwrap().parse().unwrap();
        std::future::ready(Ok(Response::builder().status(status).body(()).unwrap()))
    }
}

async fn send(svc: &mut ApiCalls<Answering>, method: Method, uri: &str, status: u16) {
    let request = Request::builder().method(method).uri(uri).header("x-status", status).body(()).unwrap();
    let _ = svc.ready().await.unwrap().call(request).await;
}

#[tokio::test]
async fn calls_are_counted_by_outcome() {
    let m = KubeMetrics::default();
    let mut svc = ApiCallLayer::new(&m).layer(Answering);
    let jobs = "/apis/batch/v1/namespaces/ns/jobs";
    send(&mut svc, Method::POST, jobs, 201).await;
    send(&mut svc, Method::POST, jobs, 409).await;
    send(&mut svc, Method::POST, jobs, 503).await;
    let get = |outcome| m.api_calls.get_or_create(&ApiCallLabels { resource: "jobs", verb: "create", outcome }).get();
    assert_eq!((get("ok"), get("already_exists"), get("server_error")), (1, 1, 1));
    let mut registry = Registry::default();
    m.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("kubernetes_api_calls_total{resource=\"jobs\",verb=\"create\",outcome=\"ok\"} 1"), "{text}");
}

#[tokio::test]
async fn a_conflict_on_a_write_is_not_already_exists() {
    let m = KubeMetrics::default();
    let mut svc = ApiCallLayer::new(&m).layer(Answering);
    send(&mut svc, Method::PUT, "/apis/jobs.jobmanager.dev/v1/namespaces/ns/jobrecords/r/status", 409).await;
    let labels = ApiCallLabels { resource: "jobrecords/status", verb: "update", outcome: "conflict" };
    assert_eq!(m.api_calls.get_or_create(&labels).get(), 1);
}

#[cfg(debug_assertions)]
#[tokio::test]
#[should_panic(expected = "is not declared in kubernetes/rbac.rs")]
async fn an_undeclared_call_panics_in_debug_builds() {
    let m = KubeMetrics::default();
    let mut svc = ApiCallLayer::new(&m).layer(Answering);
    send(&mut svc, Method::GET, "/api/v1/namespaces/ns/secrets/jm-internal", 200).await;
}

#[tokio::test]
async fn the_built_client_counts_what_never_reached_a_server() {
    let m = KubeMetrics::default();
    // Nothing listens on port 1: the call fails before any status.
    let client = build(kube::Config::new("http://127.0.0.1:1".parse().unwrap()), &m).unwrap();
    let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> = kube::Api::namespaced(client, "ns");
    assert!(jobs.list(&Default::default()).await.is_err());
    let labels = ApiCallLabels { resource: "jobs", verb: "list", outcome: "transport" };
    assert_eq!(m.api_calls.get_or_create(&labels).get(), 1);
}

#[tokio::test]
async fn an_instrumented_client_counts_like_a_built_one() {
    let m = KubeMetrics::default();
    let plain = kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap();
    let client = instrument(plain, &m);
    assert_eq!(client.default_namespace(), "default");
    let records: kube::Api<crate::backend::kubernetes::record::JobRecord> = kube::Api::namespaced(client, "ns");
    assert!(records.get_opt("jm-job-1").await.is_err());
    let labels = ApiCallLabels { resource: "jobrecords", verb: "get", outcome: "transport" };
    assert_eq!(m.api_calls.get_or_create(&labels).get(), 1);
}
