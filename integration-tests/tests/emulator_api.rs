//! The emulator's API semantics, checked on the wire (raw HTTP) and through kube-rs.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod emulator_support;

use emulator_support::{emulator, kube_client, Raw};
use integration_tests::emulator::{Fault, FaultRule};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{json, Value};

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "main", "image": "test-runtime:1"}]}})
}

fn job(name: &str) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": "test-runtime:1"}]}}}})
}

#[tokio::test]
async fn kube_discovery_finds_every_served_kind() {
    let emu = emulator().await;
    let client = kube_client(&emu).await;
    let discovery = kube::Discovery::new(client.clone()).run().await.expect("discovery");
    let mut kinds = Vec::new();
    for group in discovery.groups() {
        for (ar, _caps) in group.recommended_resources() {
            kinds.push(format!("{}/{}", ar.api_version, ar.kind));
        }
    }
    for k in [
        "v1/Pod",
        "v1/Secret",
        "v1/Service",
        "v1/ConfigMap",
        "v1/Event",
        "events.k8s.io/v1/Event",
        "batch/v1/Job",
        "apps/v1/Deployment",
        "autoscaling/v2/HorizontalPodAutoscaler",
        "networking.k8s.io/v1/NetworkPolicy",
        "coordination.k8s.io/v1/Lease",
        "apiextensions.k8s.io/v1/CustomResourceDefinition",
    ] {
        assert!(kinds.contains(&k.to_string()), "{k} missing from {kinds:?}");
    }
    let v = client.apiserver_version().await.expect("version");
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "33"));
}

#[tokio::test]
async fn crud_with_optimistic_concurrency_and_status_bodies() {
    let emu = emulator().await;
    let cms: Api<ConfigMap> = Api::namespaced(kube_client(&emu).await, "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c", "labels": {"tier": "a"}}, "data": {"k": "v"}}))
            .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.expect("create");
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some() && meta.resource_version.is_some());

    let err = cms.create(&PostParams::default(), &cm).await.unwrap_err();
    let kube::Error::Api(s) = err else { panic!("api error expected") };
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(s.message, "configmaps \"c\" already exists");

    let mut fresh = created.clone();
    fresh.data = Some([("k".to_string(), "v2".to_string())].into());
    let updated = cms.replace("c", &PostParams::default(), &fresh).await.expect("update with current rv");
    assert_ne!(updated.metadata.resource_version, created.metadata.resource_version);
    let mut stale = created.clone();
    stale.data = Some([("k".to_string(), "v3".to_string())].into());
    let kube::Error::Api(s) = cms.replace("c", &PostParams::default(), &stale).await.unwrap_err() else { panic!() };
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert!(s.message.contains("the object has been modified"), "{}", s.message);

    let kube::Error::Api(s) = cms.get("nope").await.unwrap_err() else { panic!() };
    assert_eq!((s.code, s.reason.as_str(), s.message.as_str()), (404, "NotFound", "configmaps \"nope\" not found"));

    // generateName
    let raw = Raw::new(&emu);
    let r = raw.post("/api/v1/namespaces/default/configmaps", &json!({"metadata": {"generateName": "gen-"}})).await;
    assert_eq!(r.code, 201);
    let name = r.body["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    // A no-op update does not bump the resourceVersion.
    let again = cms.replace("c", &PostParams::default(), &updated).await.expect("no-op update");
    assert_eq!(again.metadata.resource_version, updated.metadata.resource_version);
}

#[tokio::test]
async fn label_and_field_selectors() {
    let emu = emulator().await;
    let raw = Raw::new(&emu);
    for (name, app) in [("a", "web"), ("b", "db"), ("c", "cache")] {
        let mut p = pod(name);
        p["metadata"]["labels"]["app"] = json!(app);
        assert_eq!(raw.post("/api/v1/namespaces/default/pods", &p).await.code, 201);
    }
    assert_eq!(raw.post("/api/v1/namespaces/other/pods", &pod("d")).await.code, 201);
    let pods: Api<Pod> = Api::namespaced(kube_client(&emu).await, "default");
    let names = |l: Vec<Pod>| l.into_iter().map(|p| p.metadata.name.unwrap()).collect::<Vec<_>>();
    let cases = [
        ("app=web", vec!["a"]),
        ("app!=web", vec!["b", "c"]),
        ("app in (db,cache)", vec!["b", "c"]),
        ("app notin (db,cache)", vec!["a"]),
        ("app", vec!["a", "b", "c"]),
        ("!app", vec![]),
    ];
    for (sel, want) in cases {
        let got = names(pods.list(&ListParams::default().labels(sel)).await.unwrap().items);
        assert_eq!(got, want, "{sel}");
    }
    let got = names(pods.list(&ListParams::default().fields("metadata.name=b")).await.unwrap().items);
    assert_eq!(got, vec!["b"]);
    let got = names(pods.list(&ListParams::default().fields("status.phase=Pending")).await.unwrap().items);
    assert_eq!(got.len(), 3);
    let all: Api<Pod> = Api::all(kube_client(&emu).await);
    assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 4);
    let r = raw.get("/api/v1/namespaces/default/pods?fieldSelector=spec.bogus%3Dx").await;
    assert_eq!(r.code, 400);
}

#[tokio::test]
async fn validation_answers_like_the_api_server() {
    let emu = emulator().await;
    let raw = Raw::new(&emu);
    let mut j = job("j");
    j["spec"]["template"]["spec"]["containers"][0]["restartPolicy"] = json!("Always");
    let r = raw.post("/apis/batch/v1/namespaces/default/jobs", &j).await;
    assert_eq!(r.code, 422);
    assert_eq!(r.body["reason"], "Invalid");
    assert_eq!(
        r.body["message"],
        "Job.batch \"j\" is invalid: spec.template.spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers"
            .replace("Job.batch", "Job")
    );
    assert_eq!(r.body["details"]["causes"][0]["field"], "spec.template.spec.containers[0].restartPolicy");

    let mut j = job("j");
    j["spec"]["template"]["spec"]["containers"][0]["bogus"] = json!(true);
    let r = raw.post("/apis/batch/v1/namespaces/default/jobs", &j).await;
    assert_eq!((r.code, r.body["reason"].as_str()), (400, Some("BadRequest")));
    assert!(
        r.body["message"].as_str().unwrap().contains("unknown field \"spec.template.spec.containers[0].bogus\""),
        "{}",
        r.text
    );

    let r =
        raw.post("/api/v1/namespaces/default/secrets", &json!({"metadata": {"name": "s"}, "data": {"k": "***"}})).await;
    assert_eq!(r.code, 422, "{}", r.text);
    let r = raw.post("/api/v1/namespaces/default/pods", &pod("Bad_Name")).await;
    assert_eq!(r.code, 422);
    assert_eq!(r.body["details"]["causes"][0]["field"], "metadata.name");
    let mut p = pod("p");
    p["spec"]["initContainers"] = json!([{"name": "main", "image": "sidecar:1", "restartPolicy": "Always"}]);
    let r = raw.post("/api/v1/namespaces/default/pods", &p).await;
    assert_eq!(r.code, 422);
    assert!(
        r.body["message"].as_str().unwrap().contains("spec.containers[0].name: Duplicate value: \"main\""),
        "{}",
        r.text
    );

    // Job template is immutable.
    let r = raw.post("/apis/batch/v1/namespaces/default/jobs", &job("k")).await;
    assert_eq!(r.code, 201, "{}", r.text);
    let mut updated = r.body.clone();
    updated["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other:2");
    let r = raw.put("/apis/batch/v1/namespaces/default/jobs/k", &updated).await;
    assert_eq!(r.code, 422);
    assert!(r.body["message"].as_str().unwrap().contains("spec.template: Invalid value"), "{}", r.text);
    // The Job API generated the selector and the pod template labels.
    let j: Job = serde_json::from_value(updated).unwrap();
    let labels = j.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    assert_eq!(labels["job-name"], "k");
    assert!(labels.contains_key("controller-uid"));
}

#[tokio::test]
async fn watch_resumes_bookmarks_expires_and_times_out() {
    let emu = integration_tests::emulator::Emulator::start(integration_tests::emulator::EmulatorOptions {
        history: 20,
        bookmark_interval: std::time::Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap();
    let raw = Raw::new(&emu);
    let first = raw.post("/api/v1/namespaces/default/configmaps", &json!({"metadata": {"name": "w0"}})).await;
    let rv0 = first.body["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    for i in 1..4 {
        raw.post("/api/v1/namespaces/default/configmaps", &json!({"metadata": {"name": format!("w{i}")}})).await;
    }
    // Resume from rv0: exactly the three later ADDED events, then a bookmark.
    let lines = raw
        .watch_lines(&format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv0}&allowWatchBookmarks=true&timeoutSeconds=5"), 4)
        .await;
    let kinds: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["ADDED", "ADDED", "ADDED", "BOOKMARK"]);
    assert_eq!(lines[0]["object"]["metadata"]["name"], "w1");
    assert!(lines[3]["object"]["metadata"]["resourceVersion"].is_string());

    // timeoutSeconds closes the stream.
    let lines = raw
        .watch_lines("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=0&timeoutSeconds=1", 100)
        .await;
    assert_eq!(lines.len(), 4, "initial ADDED events then closed");

    // Push the first events out of the history: resuming from rv0 is 410 Expired.
    for i in 0..30 {
        raw.post("/api/v1/namespaces/default/secrets", &json!({"metadata": {"name": format!("s{i}")}})).await;
    }
    let lines =
        raw.watch_lines(&format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv0}"), 10).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["type"], "ERROR");
    assert_eq!(
        (lines[0]["object"]["code"].as_u64(), lines[0]["object"]["reason"].as_str()),
        (Some(410), Some("Expired"))
    );
}

#[tokio::test]
async fn kube_watch_sees_changes_and_selector_transitions() {
    let emu = emulator().await;
    let client = kube_client(&emu).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let list = cms.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = Box::pin(cms.watch(&WatchParams::default().labels("keep=yes").timeout(5), &rv).await.unwrap());
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x", "labels": {"keep": "yes"}}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    cms.patch("x", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"keep": "no"}}})))
        .await
        .unwrap();
    use futures_util::StreamExt as _;
    let mut seen = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev.unwrap() {
            WatchEvent::Added(o) => seen.push(format!("added {}", o.metadata.name.unwrap())),
            WatchEvent::Deleted(o) => seen.push(format!("deleted {}", o.metadata.name.unwrap())),
            WatchEvent::Modified(o) => seen.push(format!("modified {}", o.metadata.name.unwrap())),
            _ => {}
        }
        if seen.len() == 2 {
            break;
        }
    }
    // Leaving the selection looks like a deletion to this watcher.
    assert_eq!(seen, vec!["added x", "deleted x"]);
}

#[tokio::test]
async fn patch_flavours() {
    let emu = emulator().await;
    let raw = Raw::new(&emu);
    raw.post("/api/v1/namespaces/default/pods", &pod("p")).await;
    let path = "/api/v1/namespaces/default/pods/p";
    let r = raw.patch(path, "application/merge-patch+json", &json!({"metadata": {"labels": {"x": "1"}}})).await;
    assert_eq!((r.code, &r.body["metadata"]["labels"]["x"]), (200, &json!("1")));
    let r = raw
        .patch(
            path,
            "application/json-patch+json",
            &json!([{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}]),
        )
        .await;
    assert_eq!((r.code, &r.body["metadata"]["annotations"]["a"]), (200, &json!("b")));
    let r = raw
        .patch(
            path,
            "application/json-patch+json",
            &json!([{"op": "test", "path": "/metadata/name", "value": "other"}]),
        )
        .await;
    assert_eq!(r.code, 422, "{}", r.text);
    let r = raw
        .patch(
            path,
            "application/strategic-merge-patch+json",
            &json!({"spec": {"containers": [{"name": "main", "image": "test-runtime:2"}]}}),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.text);
    assert_eq!(r.body["spec"]["containers"].as_array().unwrap().len(), 1, "merged by name");
    assert_eq!(r.body["spec"]["containers"][0]["image"], "test-runtime:2");
    let r = raw.patch(path, "text/plain", &json!({})).await;
    assert_eq!(r.code, 415);
    // Status changes through the main resource are ignored; through /status they land.
    let r = raw.patch(path, "application/merge-patch+json", &json!({"status": {"phase": "Running"}})).await;
    assert_eq!(r.body["status"]["phase"], "Pending");
    let r = raw
        .patch(&format!("{path}/status"), "application/merge-patch+json", &json!({"status": {"phase": "Running"}}))
        .await;
    assert_eq!(r.body["status"]["phase"], "Running");
}

#[tokio::test]
async fn server_side_apply_is_idempotent_and_detects_conflicts() {
    let emu = emulator().await;
    let secrets: Api<Secret> = Api::namespaced(kube_client(&emu).await, "default");
    let intent = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"a": "1"}}, "stringData": {"k": "v"}});
    let a = secrets.patch("s", &PatchParams::apply("manager-a"), &Patch::Apply(&intent)).await.expect("apply creates");
    let again = secrets.patch("s", &PatchParams::apply("manager-a"), &Patch::Apply(&intent)).await.expect("re-apply");
    assert_eq!(a.metadata.resource_version, again.metadata.resource_version, "idempotent re-apply writes nothing");
    let fields = a.metadata.managed_fields.unwrap();
    assert_eq!(fields[0].manager.as_deref(), Some("manager-a"));
    assert_eq!(fields[0].operation.as_deref(), Some("Apply"));
    let other = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"a": "2"}}});
    let kube::Error::Api(s) =
        secrets.patch("s", &PatchParams::apply("manager-b"), &Patch::Apply(&other)).await.unwrap_err()
    else {
        panic!()
    };
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert!(s.message.contains("conflict with \"manager-a\""), "{}", s.message);
    let forced =
        secrets.patch("s", &PatchParams::apply("manager-b").force(), &Patch::Apply(&other)).await.expect("forced");
    assert_eq!(forced.metadata.labels.unwrap()["a"], "2");
}

#[tokio::test]
async fn deletion_propagation_and_garbage_collection() {
    let emu = emulator().await;
    let raw = Raw::new(&emu);
    let owner = |uid: &Value| json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
    // Background: dependents go with the owner.
    let j = raw.post("/apis/batch/v1/namespaces/default/jobs", &job("j")).await.body;
    raw.post(
        "/api/v1/namespaces/default/secrets",
        &json!({"metadata": {"name": "dep", "ownerReferences": owner(&j["metadata"]["uid"])}}),
    )
    .await;
    let r =
        raw.delete("/apis/batch/v1/namespaces/default/jobs/j", Some(&json!({"propagationPolicy": "Background"}))).await;
    assert_eq!((r.code, r.body["status"].as_str()), (200, Some("Success")));
    assert!(emu.object("v1", "Secret", "default", "dep").is_none(), "dependent collected");

    // A Job's default policy orphans its dependents (the batch/v1 API default).
    let j = raw.post("/apis/batch/v1/namespaces/default/jobs", &job("j")).await.body;
    raw.post(
        "/api/v1/namespaces/default/secrets",
        &json!({"metadata": {"name": "dep", "ownerReferences": owner(&j["metadata"]["uid"])}}),
    )
    .await;
    raw.delete("/apis/batch/v1/namespaces/default/jobs/j", None).await;
    let dep = emu.object("v1", "Secret", "default", "dep").expect("orphaned, not deleted");
    assert!(dep["metadata"].get("ownerReferences").is_none());
    raw.delete("/api/v1/namespaces/default/secrets/dep", None).await;

    // Foreground: the owner waits behind a finalizer until a finalizer-held dependent goes.
    let j = raw.post("/apis/batch/v1/namespaces/default/jobs", &job("j")).await.body;
    raw.post("/api/v1/namespaces/default/secrets", &json!({"metadata": {"name": "dep", "finalizers": ["example.com/hold"], "ownerReferences": owner(&j["metadata"]["uid"])}})).await;
    let r =
        raw.delete("/apis/batch/v1/namespaces/default/jobs/j", Some(&json!({"propagationPolicy": "Foreground"}))).await;
    assert_eq!(r.code, 200);
    assert_eq!(r.body["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    assert!(r.body["metadata"]["deletionTimestamp"].is_string());
    let dep = emu.object("v1", "Secret", "default", "dep").unwrap();
    assert!(dep["metadata"]["deletionTimestamp"].is_string(), "dependent marked for deletion");
    assert!(emu.object("batch/v1", "Job", "default", "j").is_some(), "owner waits");
    let r = raw
        .patch(
            "/api/v1/namespaces/default/secrets/dep",
            "application/merge-patch+json",
            &json!({"metadata": {"finalizers": null}}),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.text);
    assert!(emu.object("v1", "Secret", "default", "dep").is_none());
    assert!(emu.object("batch/v1", "Job", "default", "j").is_none(), "owner finished once dependents were gone");

    // Preconditions.
    let s = raw.post("/api/v1/namespaces/default/secrets", &json!({"metadata": {"name": "pre"}})).await.body;
    let r = raw
        .delete("/api/v1/namespaces/default/secrets/pre", Some(&json!({"preconditions": {"uid": "someone-else"}})))
        .await;
    assert_eq!((r.code, r.body["reason"].as_str()), (409, Some("Conflict")));
    let secrets: Api<Secret> = Api::namespaced(kube_client(&emu).await, "default");
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: s["metadata"]["uid"].as_str().map(str::to_string),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert!(secrets.delete("pre", &dp).await.expect("matching precondition").is_right());
}

#[tokio::test]
async fn custom_resources_are_served_once_their_crd_exists() {
    let emu = emulator().await;
    let raw = Raw::new(&emu);
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"], "properties": {"size": {"type": "integer"}}},
                    "status": {"type": "object", "properties": {"phase": {"type": "string"}}}}}}}]}});
    assert_eq!(raw.get("/apis/example.com/v1/namespaces/default/widgets").await.code, 404);
    let r = raw.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", &crd).await;
    assert_eq!(r.code, 201, "{}", r.text);
    assert_eq!(r.body["status"]["conditions"][1]["type"], "Established");
    let list = raw.get("/apis/example.com/v1").await;
    assert_eq!(list.body["resources"][0]["name"], "widgets");
    let w = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}, "status": {"phase": "ignored"}});
    let r = raw.post("/apis/example.com/v1/namespaces/default/widgets", &w).await;
    assert_eq!(r.code, 201, "{}", r.text);
    assert!(r.body.get("status").is_none(), "status is dropped on create when the subresource exists");
    let mut bad = w.clone();
    bad["spec"]["colour"] = json!("red");
    bad["metadata"]["name"] = json!("w2");
    assert_eq!(raw.post("/apis/example.com/v1/namespaces/default/widgets", &bad).await.code, 400);
    let r = raw
        .patch(
            "/apis/example.com/v1/namespaces/default/widgets/w",
            "application/strategic-merge-patch+json",
            &json!({}),
        )
        .await;
    assert_eq!(r.code, 415);
    let r = raw
        .patch(
            "/apis/example.com/v1/namespaces/default/widgets/w/status",
            "application/merge-patch+json",
            &json!({"status": {"phase": "Ready"}}),
        )
        .await;
    assert_eq!((r.code, &r.body["status"]["phase"]), (200, &json!("Ready")));
    // Deleting the CRD removes its objects and stops serving the type.
    raw.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com", None).await;
    assert_eq!(raw.get("/apis/example.com/v1/namespaces/default/widgets/w").await.code, 404);
}

#[tokio::test]
async fn injected_faults_reach_clients() {
    let emu = emulator().await;
    let raw = Raw::new(&emu);
    emu.faults()
        .add(FaultRule::new(Fault::TooManyRequests { retry_after_secs: 2 }).verb("create").resource("pods").times(1));
    let r = raw.post("/api/v1/namespaces/default/pods", &pod("p")).await;
    assert_eq!((r.code, r.body["reason"].as_str()), (429, Some("TooManyRequests")));
    assert_eq!(r.headers["retry-after"], "2");
    assert_eq!(
        raw.post("/api/v1/namespaces/default/pods", &pod("p")).await.code,
        201,
        "the rule retired after one hit"
    );

    emu.faults().add(FaultRule::new(Fault::InternalError).verb("get").times(1));
    let r = raw.get("/api/v1/namespaces/default/pods/p").await;
    assert_eq!((r.code, r.body["reason"].as_str()), (500, Some("InternalError")));

    emu.faults().add(FaultRule::new(Fault::Conflict).resource("pods").times(1));
    let r = raw
        .patch(
            "/api/v1/namespaces/default/pods/p",
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"z": "1"}}}),
        )
        .await;
    assert_eq!((r.code, r.body["reason"].as_str()), (409, Some("Conflict")));

    emu.faults().add(FaultRule::new(Fault::DropWatch { after_millis: 0 }).times(1));
    let lines = raw.watch_lines("/api/v1/namespaces/default/pods?watch=true", 10).await;
    assert_eq!(lines.len(), 1, "initial state, then the stream was dropped");

    // The admin endpoint drives the same rules for the standalone binary.
    let r =
        raw.post("/emulator/faults", &json!({"verb": "list", "fault": {"type": "internalError"}, "times": 1})).await;
    assert_eq!(r.code, 201);
    assert_eq!(raw.get("/api/v1/namespaces/default/pods").await.code, 500);
    assert_eq!(raw.get("/api/v1/namespaces/default/pods").await.code, 200);
    let log = raw.get("/emulator/requests").await.body;
    assert!(log.as_array().unwrap().iter().any(|r| r["verb"] == "create" && r["code"] == 429));
    assert_eq!(emu.faults().injected(), 5);
}

#[tokio::test]
async fn leases_elect_exactly_one_leader_through_server_side_apply() {
    let emu = emulator().await;
    let client = kube_client(&emu).await;
    let make = |id: &str| {
        kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "service-setup")
            .with_namespace("default")
            .with_identity(id)
            .with_duration(2)
            .with_grace(1)
            .build()
    };
    let a = make("replica-a").await.expect("manager a");
    let b = make("replica-b").await.expect("manager b");
    let (mut rx_a, task_a) = a.watch().await;
    let (mut rx_b, task_b) = b.watch().await;
    // Wait until someone holds it, then check that exactly one does.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if *rx_a.borrow_and_update() || *rx_b.borrow_and_update() {
                break;
            }
            tokio::select! { _ = rx_a.changed() => {}, _ = rx_b.changed() => {} }
        }
    })
    .await
    .expect("a leader within 10s");
    let (la, lb) = (*rx_a.borrow(), *rx_b.borrow());
    assert!(la ^ lb, "exactly one leader: a={la} b={lb}");
    let lease = emu.object("coordination.k8s.io/v1", "Lease", "default", "service-setup").unwrap();
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap();
    assert_eq!(holder, if la { "replica-a" } else { "replica-b" });
    drop((rx_a, rx_b));
    let _ = tokio::join!(task_a, task_b);
}
