//! The standalone `kube-emulator` binary: serves on the address asked, writes a
//! kubeconfig kube-rs can use, and takes fault rules over its admin endpoint.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use tokio::io::AsyncBufReadExt;

#[tokio::test]
async fn the_binary_serves_the_api_and_its_admin_endpoint() {
    let dir = tempfile::Builder::new().prefix("kube-emulator-bin-").tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = tokio::process::Command::new(integration_tests::bins::bin_path("kube-emulator"))
        .args(["--listen", "127.0.0.1:0", "--namespace", "e2e", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Readiness: the binary prints its URL once serving.
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().expect("a line on stdout");
    assert!(first.starts_with("kube-emulator serving http://127.0.0.1:"), "{first}");

    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    assert_eq!(kc.contexts[0].context.as_ref().unwrap().namespace.as_deref(), Some("e2e"));
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "hello"}})).unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some("e2e"));

    // Fault rules over HTTP: the next get fails with 500 (kube retries 5xx, so go raw).
    let base = first.trim_start_matches("kube-emulator serving ").split_whitespace().next().unwrap().to_string();
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let post = http::Request::post(format!("{base}/emulator/faults"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"verb":"get","fault":{"type":"internalError"},"times":1}"#,
        )))
        .unwrap();
    assert_eq!(http.request(post).await.unwrap().status(), 201);
    let get =
        http::Request::get(format!("{base}/api/v1/namespaces/e2e/configmaps/hello")).body(Default::default()).unwrap();
    assert_eq!(http.request(get).await.unwrap().status(), 500);
    let get =
        http::Request::get(format!("{base}/api/v1/namespaces/e2e/configmaps/hello")).body(Default::default()).unwrap();
    assert_eq!(http.request(get).await.unwrap().status(), 200);
    child.start_kill().unwrap();
}
