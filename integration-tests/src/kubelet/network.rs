//! Pod networking for processes that share the host's network: every port a pod
//! declares (or names in a `host:port` listen setting) is remapped to a free loopback
//! port, and Services get a local TCP forwarder per port that spreads connections
//! over the ready pods matching the selector (or over registered external endpoints,
//! for Services whose backends run outside the emulator, like the job manager in the
//! end-to-end tests). Values that mention a Service's cluster DNS name are rewritten
//! to its forwarder, so `http://job-manager.ns.svc:8080` works from a pod process.
use crate::emulator::selectors::LabelSelector;
use crate::emulator::store::{meta_str, Store};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};

/// The loopback ports standing in for one pod's ports.
#[derive(Clone, Debug, Default)]
pub struct PodNet {
    /// Declared/used pod port -> local port.
    pub ports: HashMap<u16, u16>,
    /// Named container ports -> pod port.
    pub names: HashMap<String, u16>,
    pub ready: bool,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl PodNet {
    pub fn resolve(&self, port: &Value) -> Option<u16> {
        let pod_port = match port {
            Value::Number(n) => n.as_u64()? as u16,
            Value::String(s) => match s.parse::<u16>() {
                Ok(n) => n,
                Err(_) => *self.names.get(s)?,
            },
            _ => return None,
        };
        self.ports.get(&pod_port).copied()
    }
}

#[derive(Default)]
pub struct Network {
    pods: Mutex<HashMap<(String, String), PodNet>>,
    forwarders: Mutex<HashMap<(String, String, u16), SocketAddr>>,
    external: Mutex<HashMap<(String, String), Vec<SocketAddr>>>,
    next: AtomicUsize,
}

/// A free loopback port (bound then released: a small race the tests accept).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// `host:port` pairs written in a string (listen addresses, URLs) for loopback and
/// wildcard hosts.
pub fn local_ports_in(s: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for host in ["127.0.0.1:", "0.0.0.0:", "localhost:", "[::]:", "[::1]:"] {
        let mut rest = s;
        while let Some(i) = rest.find(host) {
            let after = &rest[i + host.len()..];
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(p) = digits.parse::<u16>() {
                out.push(p);
            }
            rest = after;
        }
    }
    out
}

/// Rewrites `host:pod_port` to the pod's local port (wildcard hosts become loopback:
/// the kubelet never exposes a pod beyond 127.0.0.1).
pub fn remap_ports(s: &str, ports: &HashMap<u16, u16>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let b = s.as_bytes();
    'outer: while i < s.len() {
        for (host, replacement) in [
            ("127.0.0.1:", "127.0.0.1:"),
            ("0.0.0.0:", "127.0.0.1:"),
            ("localhost:", "localhost:"),
            ("[::]:", "127.0.0.1:"),
            ("[::1]:", "[::1]:"),
        ] {
            if s[i..].starts_with(host) {
                let start = i + host.len();
                let end = start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
                if let Some(mapped) = s[start..end].parse::<u16>().ok().and_then(|p| ports.get(&p)) {
                    out.push_str(replacement);
                    out.push_str(&mapped.to_string());
                    i = end;
                    continue 'outer;
                }
            }
        }
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

impl Network {
    pub fn set_pod(&self, ns: &str, name: &str, net: PodNet) {
        self.pods.lock().unwrap_or_else(|e| e.into_inner()).insert((ns.into(), name.into()), net);
    }

    pub fn set_ready(&self, ns: &str, name: &str, ready: bool) {
        if let Some(p) = self.pods.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&(ns.into(), name.into())) {
            p.ready = ready;
        }
    }

    pub fn remove_pod(&self, ns: &str, name: &str) {
        self.pods.lock().unwrap_or_else(|e| e.into_inner()).remove(&(ns.into(), name.into()));
    }

    pub fn pod(&self, ns: &str, name: &str) -> Option<PodNet> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner()).get(&(ns.into(), name.into())).cloned()
    }

    /// Backends for a Service living outside the emulator (e.g. the job manager).
    pub fn set_external_endpoints(&self, ns: &str, service: &str, addrs: Vec<SocketAddr>) {
        self.external.lock().unwrap_or_else(|e| e.into_inner()).insert((ns.into(), service.into()), addrs);
    }

    /// The local address of a Service port, starting its forwarder on first use. The
    /// Service need not exist yet: each connection looks it up (its `targetPort` and
    /// selector) when it arrives, like kube-proxy following the Service.
    pub fn service_addr(
        self: &Arc<Self>,
        store: &Arc<Store>,
        ns: &str,
        service: &str,
        port: u16,
    ) -> Option<SocketAddr> {
        let key = (ns.to_string(), service.to_string(), port);
        let mut forwarders = self.forwarders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = forwarders.get(&key) {
            return Some(*a);
        }
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        std_listener.set_nonblocking(true).ok()?;
        let addr = std_listener.local_addr().ok()?;
        let listener = TcpListener::from_std(std_listener).ok()?;
        forwarders.insert(key, addr);
        drop(forwarders);
        let net = self.clone();
        let store = store.clone();
        let (ns, service) = (ns.to_string(), service.to_string());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let backends = net.backends(&store, &ns, &service, port);
                let start = net.next.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    for i in 0..backends.len() {
                        let b = backends[(start + i) % backends.len()];
                        if let Ok(mut upstream) = TcpStream::connect(b).await {
                            let mut client = client;
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            return;
                        }
                    }
                    // No ready endpoint: the connection is refused, as with kube-proxy.
                });
            }
        });
        Some(addr)
    }

    fn backends(&self, store: &Store, ns: &str, service: &str, port: u16) -> Vec<SocketAddr> {
        if let Some(ext) = self.external.lock().unwrap_or_else(|e| e.into_inner()).get(&(ns.into(), service.into())) {
            return ext.clone();
        }
        let Some(rt) = store.find_kind("v1", "Service") else {
            return vec![];
        };
        let Ok(svc) = store.get(&rt, ns, service) else {
            return vec![];
        };
        let target = svc["spec"]["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["port"].as_u64() == Some(port as u64)))
            .map(|p| p["targetPort"].clone());
        let selector: std::collections::BTreeMap<String, String> = svc["spec"]["selector"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        if selector.is_empty() {
            return vec![];
        }
        let sel = LabelSelector(
            selector.into_iter().map(|(k, v)| crate::emulator::selectors::Requirement::Eq(k, v)).collect(),
        );
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        let selected = pods.iter().filter(|((pns, _), p)| pns == ns && p.ready && sel.matches(&p.labels));
        match target {
            Some(target) => selected
                .filter_map(|(_, p)| p.resolve(&target).map(|port| SocketAddr::from(([127, 0, 0, 1], port))))
                .collect(),
            // Not a port of the Service, but a selected pod's local port: a process that
            // derives a Service URL from its own (remapped) listen port, which equals
            // the Service port in a cluster, still reaches its pods.
            None => selected
                .filter(|(_, p)| p.ports.values().any(|local| *local == port))
                .map(|_| SocketAddr::from(([127, 0, 0, 1], port)))
                .collect(),
        }
    }

    /// Rewrites cluster DNS names of existing Services (`name.ns.svc[.cluster.local]:port`)
    /// to their local forwarders.
    pub fn rewrite_service_hosts(self: &Arc<Self>, store: &Arc<Store>, s: &str) -> String {
        let Some(rt) = store.find_kind("v1", "Service") else {
            return s.to_string();
        };
        let (services, _) = store.list(&rt, None, &Default::default(), &Default::default());
        let mut out = s.to_string();
        for svc in services {
            let (name, ns) = (meta_str(&svc, "name"), meta_str(&svc, "namespace"));
            for suffix in [".svc.cluster.local:", ".svc:"] {
                let host = format!("{name}.{ns}{suffix}");
                while let Some(i) = out.find(&host) {
                    let start = i + host.len();
                    let digits: String = out[start..].chars().take_while(char::is_ascii_digit).collect();
                    let Ok(port) = digits.parse::<u16>() else {
                        break;
                    };
                    let Some(addr) = self.service_addr(store, ns, name, port) else {
                        break;
                    };
                    out.replace_range(i..start + digits.len(), &addr.to_string());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_remaps_local_ports_without_touching_longer_numbers() {
        assert_eq!(local_ports_in("http://127.0.0.1:3128 0.0.0.0:9901"), vec![3128, 9901]);
        let ports = HashMap::from([(3128, 40001), (9901, 40002)]);
        assert_eq!(remap_ports("http://127.0.0.1:3128/x", &ports), "http://127.0.0.1:40001/x");
        assert_eq!(remap_ports("0.0.0.0:9901", &ports), "127.0.0.1:40002");
        assert_eq!(remap_ports("127.0.0.1:31280", &ports), "127.0.0.1:31280");
        assert_eq!(remap_ports("example.com:3128", &ports), "example.com:3128");
    }

    #[test]
    fn named_ports_resolve_through_container_port_names() {
        let net = PodNet {
            ports: HashMap::from([(9901, 50000)]),
            names: HashMap::from([("admin".to_string(), 9901)]),
            ..Default::default()
        };
        assert_eq!(net.resolve(&Value::from("admin")), Some(50000));
        assert_eq!(net.resolve(&Value::from(9901)), Some(50000));
        assert_eq!(net.resolve(&Value::from("nope")), None);
    }
}
