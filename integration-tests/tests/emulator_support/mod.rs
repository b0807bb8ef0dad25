//! Shared helpers for the emulator tests: a started emulator, a kube client for it
//! and a raw HTTP client (to check the wire format kube-rs hides).
#![allow(dead_code)]
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use integration_tests::emulator::{Emulator, EmulatorOptions};
use serde_json::Value;
use std::time::Duration;

pub async fn emulator() -> Emulator {
    Emulator::start(EmulatorOptions { bookmark_interval: Duration::from_millis(200), ..Default::default() })
        .await
        .expect("emulator starts")
}

pub async fn kube_client(emu: &Emulator) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(emu.kubeconfig_path()).expect("kubeconfig readable");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig valid");
    kube::Client::try_from(cfg).expect("client builds")
}

pub struct Raw {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub struct RawResponse {
    pub code: u16,
    pub headers: http::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Raw {
    pub fn new(emu: &Emulator) -> Self {
        Self { base: emu.url(), client: Client::builder(TokioExecutor::new()).build_http() }
    }

    pub async fn send(&self, method: &str, path: &str, content_type: &str, body: Option<&Value>) -> RawResponse {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
            .unwrap();
        let resp = self.client.request(req).await.expect("request served");
        let code = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        RawResponse { code, headers, body, text }
    }

    pub async fn get(&self, path: &str) -> RawResponse {
        self.send("GET", path, "application/json", None).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> RawResponse {
        self.send("POST", path, "application/json", Some(body)).await
    }
    pub async fn put(&self, path: &str, body: &Value) -> RawResponse {
        self.send("PUT", path, "application/json", Some(body)).await
    }
    pub async fn patch(&self, path: &str, ct: &str, body: &Value) -> RawResponse {
        self.send("PATCH", path, ct, Some(body)).await
    }
    pub async fn delete(&self, path: &str, body: Option<&Value>) -> RawResponse {
        self.send("DELETE", path, "application/json", body).await
    }

    /// Reads a watch stream until it closes; returns the event lines.
    pub async fn watch_lines(&self, path: &str, limit: usize) -> Vec<Value> {
        let req = http::Request::builder().uri(format!("{}{}", self.base, path)).body(Full::new(Bytes::new())).unwrap();
        let resp = self.client.request(req).await.expect("watch served");
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    out.push(serde_json::from_slice(&line).expect("watch lines are JSON"));
                    if out.len() >= limit {
                        return out;
                    }
                }
            }
        }
        out
    }
}
