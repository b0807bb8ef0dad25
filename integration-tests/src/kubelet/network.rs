//! Pod networking for processes on the host's network: every pod gets a loopback
//! address of its own (`127.B.x.y`; Linux routes all of 127/8 to `lo`, and each
//! kubelet reserves one `B` so parallel test processes never share an address), so its
//! containers bind their real ports. Addresses a pod's processes would bind or dial
//! inside their own network namespace (`0.0.0.0`, `127.0.0.1`, `localhost`, `[::]`,
//! `[::1]`, with one of the pod's ports) are pointed at the pod's address in env, args
//! and mounted Secret/ConfigMap files; ports never change.
//!
//! Every Service gets a loopback "cluster IP" (`127.B.0.k`) with a TCP forwarder on
//! each of its ports that spreads connections over the ready pods matching the selector
//! (at `podIP:targetPort`), or over registered external endpoints (Services whose
//! backends run outside the emulator, like the job manager in the end-to-end tests).
//! Cluster DNS names (`name.ns.svc`, `name.ns.svc.cluster.local`) resolve through a
//! hosts file that the kubelet bind-mounts over `/etc/hosts` in each container's own
//! mount namespace (see [`super::pod`]); values that mention an existing Service's name
//! are also rewritten to its address, for resolvers that read `/etc/hosts` only once.
use crate::emulator::selectors::LabelSelector;
use crate::emulator::store::{meta_str, Store};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};

/// One pod's address and ports.
#[derive(Clone, Debug)]
pub struct PodNet {
    pub ip: Ipv4Addr,
    /// Ports the pod declares or names in a loopback/wildcard `host:port`.
    pub ports: BTreeSet<u16>,
    /// Named container ports -> port.
    pub names: HashMap<String, u16>,
    pub ready: bool,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl PodNet {
    pub fn new(ip: Ipv4Addr) -> Self {
        Self { ip, ports: BTreeSet::new(), names: HashMap::new(), ready: false, labels: Default::default() }
    }

    /// The address a Service's `targetPort` (number or container port name) reaches.
    pub fn resolve(&self, port: &Value) -> Option<SocketAddr> {
        let port = match port {
            Value::Number(n) => u16::try_from(n.as_u64()?).ok()?,
            Value::String(s) => match s.parse::<u16>() {
                Ok(n) => n,
                Err(_) => *self.names.get(s)?,
            },
            _ => return None,
        };
        Some(SocketAddr::from((self.ip, port)))
    }
}

/// The port that reserves a kubelet's block: bound on `127.B.255.255`, an address no
/// pod or Service gets.
const RESERVATION_PORT: u16 = 65535;

pub struct Network {
    /// `B` of this kubelet's `127.B.0.0/16`.
    block: u8,
    _reservation: std::net::TcpListener,
    next_pod: AtomicU32,
    pods: Mutex<HashMap<(String, String), PodNet>>,
    services: Mutex<HashMap<(String, String), Ipv4Addr>>,
    forwarders: Mutex<HashMap<(String, String, u16), SocketAddr>>,
    external: Mutex<HashMap<(String, String), Vec<SocketAddr>>>,
    hosts: PathBuf,
    next: AtomicUsize,
}

/// A free loopback port (bound then released: a small race the tests accept).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Loopback and wildcard hosts as they appear before a port.
const LOCAL_HOSTS: [&str; 5] = ["127.0.0.1:", "0.0.0.0:", "localhost:", "[::]:", "[::1]:"];

/// `host:port` pairs written in a string (listen addresses, URLs) for loopback and
/// wildcard hosts.
pub fn local_ports_in(s: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for host in LOCAL_HOSTS {
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

/// Points loopback/wildcard `host:port` at the pod's address when `port` is one of the
/// pod's ports (what that address means inside a pod's own network namespace); other
/// ports (a broker or an API server on the host) are left alone.
pub fn to_pod_address(s: &str, ip: Ipv4Addr, ports: &BTreeSet<u16>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let b = s.as_bytes();
    'outer: while i < s.len() {
        for host in LOCAL_HOSTS {
            if s[i..].starts_with(host) {
                let start = i + host.len();
                let end = start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
                if s[start..end].parse::<u16>().is_ok_and(|p| ports.contains(&p)) {
                    out.push_str(&format!("{ip}:"));
                    out.push_str(&s[start..end]);
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

/// Reserves a `127.B.0.0/16` block no other kubelet on this machine holds.
fn reserve_block() -> (u8, std::net::TcpListener) {
    use rand::RngExt as _;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let block: u8 = rng.random_range(2..=254);
        if let Ok(l) = std::net::TcpListener::bind((Ipv4Addr::new(127, block, 255, 255), RESERVATION_PORT)) {
            return (block, l);
        }
    }
    panic!("no free 127.B.0.0/16 block for pod addresses (1000 tries)");
}

impl Network {
    /// A network whose hosts file (for pods' `/etc/hosts`) lives in `dir`.
    pub fn new(dir: &Path) -> Self {
        let (block, reservation) = reserve_block();
        let hosts = dir.join("hosts");
        let base = std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| "127.0.0.1\tlocalhost\n".into());
        let _ = std::fs::write(&hosts, format!("{}\n# Services (kube-emulator kubelet)\n", base.trim_end()));
        Self {
            block,
            _reservation: reservation,
            next_pod: AtomicU32::new(0),
            pods: Default::default(),
            services: Default::default(),
            forwarders: Default::default(),
            external: Default::default(),
            hosts,
            next: AtomicUsize::new(0),
        }
    }

    /// The hosts file pods see as `/etc/hosts`: the host's, plus every Service's names.
    pub fn hosts_file(&self) -> &Path {
        &self.hosts
    }

    /// A fresh pod address: `127.B.x.y`, x >= 1 (x = 0 is for Services).
    pub fn allocate_pod_ip(&self) -> Ipv4Addr {
        let n = self.next_pod.fetch_add(1, Ordering::Relaxed) % (254 * 254);
        Ipv4Addr::new(127, self.block, 1 + (n / 254) as u8, 1 + (n % 254) as u8)
    }

    /// A Service's address (`127.B.0.k`), allocated on first use and kept for its name;
    /// its DNS names go into the hosts file then.
    pub fn service_ip(&self, ns: &str, service: &str) -> Option<Ipv4Addr> {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ip) = services.get(&(ns.to_string(), service.to_string())) {
            return Some(*ip);
        }
        let k = u8::try_from(services.len() + 1).ok().filter(|k| *k < 255)?;
        let ip = Ipv4Addr::new(127, self.block, 0, k);
        // Append-only, one write per line: a resolver reading meanwhile sees whole lines.
        let line = format!("{ip}\t{service}.{ns}.svc {service}.{ns}.svc.cluster.local\n");
        let written =
            std::fs::OpenOptions::new().append(true).open(&self.hosts).and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not add {service}.{ns}.svc to the pods' hosts file");
        }
        services.insert((ns.to_string(), service.to_string()), ip);
        Some(ip)
    }

    /// Gives every Service an address and a forwarder on each of its ports, like
    /// kube-proxy following the Services.
    pub fn sync_services(self: &Arc<Self>, store: &Arc<Store>) {
        let Some(rt) = store.find_kind("v1", "Service") else {
            return;
        };
        let (services, _) = store.list(&rt, None, &Default::default(), &Default::default());
        for svc in services {
            let (name, ns) = (meta_str(&svc, "name"), meta_str(&svc, "namespace"));
            for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
                if let Some(port) = p["port"].as_u64().and_then(|p| u16::try_from(p).ok()) {
                    self.service_addr(store, ns, name, port);
                }
            }
        }
    }

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

    /// The address of a Service port (`<its address>:<port>`), starting its forwarder
    /// on first use. The Service need not exist yet: each connection looks it up (its
    /// `targetPort` and selector) when it arrives, like kube-proxy following the Service.
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
        let ip = self.service_ip(ns, service)?;
        let std_listener = match std::net::TcpListener::bind((ip, port)) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "no forwarder for Service {ns}/{service} port {port} on {ip}");
                return None;
            }
        };
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
        let Some(target) = svc["spec"]["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["port"].as_u64() == Some(port as u64)))
            .map(|p| if p.get("targetPort").is_some() { p["targetPort"].clone() } else { p["port"].clone() })
        else {
            return vec![];
        };
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
        pods.iter()
            .filter(|((pns, _), p)| pns == ns && p.ready && sel.matches(&p.labels))
            .filter_map(|(_, p)| p.resolve(&target))
            .collect()
    }

    /// Rewrites cluster DNS names of existing Services (`name.ns.svc[.cluster.local]:port`)
    /// to their addresses.
    pub fn rewrite_service_hosts(self: &Arc<Self>, store: &Arc<Store>, s: &str) -> String {
        if !s.contains(".svc") {
            return s.to_string();
        }
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
    fn finds_local_ports_and_points_the_pods_own_at_its_address() {
        assert_eq!(local_ports_in("http://127.0.0.1:3128 0.0.0.0:9901"), vec![3128, 9901]);
        let ip = Ipv4Addr::new(127, 7, 1, 2);
        let ports = BTreeSet::from([3128, 9901]);
        assert_eq!(to_pod_address("http://127.0.0.1:3128/x", ip, &ports), "http://127.7.1.2:3128/x");
        assert_eq!(to_pod_address("listen: 0.0.0.0:9901", ip, &ports), "listen: 127.7.1.2:9901");
        assert_eq!(to_pod_address("[::]:3128 localhost:9901", ip, &ports), "127.7.1.2:3128 127.7.1.2:9901");
        assert_eq!(to_pod_address("127.0.0.1:31280", ip, &ports), "127.0.0.1:31280", "not a pod port");
        assert_eq!(to_pod_address("http://127.0.0.1:4000", ip, &ports), "http://127.0.0.1:4000", "a host service");
        assert_eq!(to_pod_address("example.com:3128", ip, &ports), "example.com:3128");
    }

    #[test]
    fn target_ports_resolve_to_the_pods_address_through_container_port_names() {
        let mut net = PodNet::new(Ipv4Addr::new(127, 7, 1, 3));
        net.names.insert("admin".to_string(), 9901);
        assert_eq!(net.resolve(&Value::from("admin")), Some("127.7.1.3:9901".parse().unwrap()));
        assert_eq!(net.resolve(&Value::from(8080)), Some("127.7.1.3:8080".parse().unwrap()));
        assert_eq!(net.resolve(&Value::from("nope")), None);
    }

    #[test]
    fn each_network_holds_its_own_block_and_names_services_in_its_hosts_file() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (Network::new(da.path()), Network::new(db.path()));
        assert_ne!(a.block, b.block, "two live kubelets never share a block");
        let (p1, p2) = (a.allocate_pod_ip(), a.allocate_pod_ip());
        assert_ne!(p1, p2);
        assert_eq!(p1.octets()[..2], [127, a.block]);
        assert_ne!(p1.octets()[2], 0, "x = 0 is for Services");
        let ip = a.service_ip("jobs", "rt").unwrap();
        assert_eq!(a.service_ip("jobs", "rt"), Some(ip), "stable per name");
        let hosts = std::fs::read_to_string(a.hosts_file()).unwrap();
        assert!(hosts.contains(&format!("{ip}\trt.jobs.svc rt.jobs.svc.cluster.local\n")), "{hosts}");
        assert!(hosts.contains("localhost"), "the host's entries stay: {hosts}");
    }
}
