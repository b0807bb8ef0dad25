//! Startup and readiness probes, run against the pod's address.
use super::super::network::PodNet;
use serde_json::Value;
use std::time::Duration;

pub(super) async fn probe_passes(probe: &Value, net: &PodNet) -> bool {
    if let Some(get) = probe.get("httpGet") {
        let Some(port) = net.resolve(&get["port"]) else {
            return false;
        };
        let path = get["path"].as_str().unwrap_or("/");
        return http_get_ok(port, path).await;
    }
    if let Some(tcp) = probe.get("tcpSocket") {
        let Some(port) = net.resolve(&tcp["port"]) else {
            return false;
        };
        return tokio::net::TcpStream::connect(port).await.is_ok();
    }
    // exec/grpc probes are not emulated: treated as passing.
    true
}

async fn http_get_ok(addr: std::net::SocketAddr, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = [0u8; 32];
        let n = s.read(&mut buf).await.ok()?;
        let line = String::from_utf8_lossy(&buf[..n]).to_string();
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt).await.ok().flatten().unwrap_or(false)
}
