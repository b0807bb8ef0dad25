//! The runtime NetworkPolicy (applied by the `service-setup` holder when enabled).
use super::TranslateSettings;
use crate::backend::kubernetes::labels;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Cloud metadata endpoints blocked by the runtime NetworkPolicy (`restrictMetadataService`).
/// IPv4: all of link-local (169.254.169.254 on every major cloud, AWS ECS 169.254.170.2,
/// EKS Pod Identity 169.254.170.23; node-local DNS caches there stay reachable through
/// the DNS rule), Alibaba Cloud's 100.100.100.200 and Azure's WireServer 168.63.129.16.
pub const METADATA_CIDRS_V4: [&str; 3] = ["169.254.0.0/16", "100.100.100.200/32", "168.63.129.16/32"];
/// IPv6: link-local, AWS IMDS (`fd00:ec2::254`) and EKS Pod Identity (`fd00:ec2::23`),
/// GCP (`fd20:ce::254`), Oracle Cloud (`fd00:c1::a9fe:a9fe`).
pub const METADATA_CIDRS_V6: [&str; 5] =
    ["fe80::/10", "fd00:ec2::254/128", "fd00:ec2::23/128", "fd20:ce::254/128", "fd00:c1::a9fe:a9fe/128"];

/// The runtime NetworkPolicy: runtime pods accept ingress only from job-manager pods (on
/// the sidecar's ingress port), and may reach DNS, the job manager, and anything else
/// except cloud metadata (when `restrictMetadataService`), the API server addresses and
/// `networkPolicy.denyCidrs` (node CIDRs: kubelets). Defence in depth: the pod's egress
/// firewall already keeps the runtime behind its sidecar, and finer egress policy
/// (private ranges, hosts) is the sidecar's job.
pub fn runtime_network_policy(settings: &TranslateSettings, namespace: &str) -> networking::NetworkPolicy {
    let runtime_pods = LabelSelector {
        match_labels: Some(BTreeMap::from([
            (labels::MANAGED_BY.to_string(), labels::MANAGED_BY_VALUE.to_string()),
            (labels::COMPONENT.to_string(), labels::COMPONENT_RUNTIME.to_string()),
        ])),
        match_expressions: None,
    };
    let job_manager_pods = LabelSelector {
        match_labels: Some(settings.kubernetes.job_manager_pod_labels.clone()),
        match_expressions: None,
    };
    let tcp = |port: u16| networking::NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".into()),
        end_port: None,
    };
    let (mut except_v4, mut except_v6) = (Vec::new(), Vec::new());
    if settings.kubernetes.restrict_metadata_service {
        except_v4.extend(METADATA_CIDRS_V4.map(String::from));
        except_v6.extend(METADATA_CIDRS_V6.map(String::from));
    }
    for address in &settings.sidecar.api_server_addresses {
        match api_server_ip(address) {
            Some(std::net::IpAddr::V4(ip)) => except_v4.push(format!("{ip}/32")),
            Some(std::net::IpAddr::V6(ip)) => except_v6.push(format!("{ip}/128")),
            None => {} // a host name: only the sidecar can refuse it (it resolves names)
        }
    }
    for cidr in &settings.kubernetes.network_policy.deny_cidrs {
        match canonical_cidr(cidr) {
            Some(c) if c.contains(':') => except_v6.push(c),
            Some(c) => except_v4.push(c),
            None => {} // config validation refused it
        }
    }
    dedup_keep_order(&mut except_v4);
    dedup_keep_order(&mut except_v6);
    let block = |cidr: &str, except: Vec<String>| networking::NetworkPolicyPeer {
        ip_block: Some(networking::IPBlock { cidr: cidr.into(), except: (!except.is_empty()).then_some(except) }),
        ..networking::NetworkPolicyPeer::default()
    };
    networking::NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(labels::RUNTIME_NETWORK_POLICY_NAME.into()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (labels::MANAGED_BY.to_string(), labels::MANAGED_BY_VALUE.to_string()),
                (labels::COMPONENT.to_string(), labels::COMPONENT_RUNTIME_NETWORK_POLICY.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(networking::NetworkPolicySpec {
            pod_selector: Some(runtime_pods),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![networking::NetworkPolicyIngressRule {
                from: Some(vec![networking::NetworkPolicyPeer {
                    pod_selector: Some(job_manager_pods.clone()),
                    ..networking::NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![tcp(settings.sidecar.ingress_port)]),
            }]),
            egress: Some(vec![
                networking::NetworkPolicyEgressRule {
                    to: None,
                    ports: Some(vec![
                        networking::NetworkPolicyPort {
                            port: Some(IntOrString::Int(53)),
                            protocol: Some("UDP".into()),
                            end_port: None,
                        },
                        tcp(53),
                    ]),
                },
                networking::NetworkPolicyEgressRule {
                    to: Some(vec![networking::NetworkPolicyPeer {
                        pod_selector: Some(job_manager_pods),
                        ..networking::NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![tcp(settings.job_manager_port)]),
                },
                networking::NetworkPolicyEgressRule {
                    to: Some(vec![block("0.0.0.0/0", except_v4), block("::/0", except_v6)]),
                    ports: None,
                },
            ]),
        }),
    }
}

fn dedup_keep_order(list: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    list.retain(|c| seen.insert(c.clone()));
}

/// `10.1.2.3/16` -> `10.1.0.0/16` (the API server warns on host bits); `None` if not a
/// CIDR with a non-zero prefix (an `except` must be a strict subset of `0.0.0.0/0`).
pub(crate) fn canonical_cidr(cidr: &str) -> Option<String> {
    let (ip, prefix) = cidr.trim().split_once('/')?;
    let prefix: u32 = prefix.parse().ok()?;
    match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(ip) if (1..=32).contains(&prefix) => {
            let mask = u32::MAX << (32 - prefix);
            Some(format!("{}/{prefix}", std::net::Ipv4Addr::from(u32::from(ip) & mask)))
        }
        std::net::IpAddr::V6(ip) if (1..=128).contains(&prefix) => {
            let mask = u128::MAX << (128 - prefix);
            Some(format!("{}/{prefix}", std::net::Ipv6Addr::from(u128::from(ip) & mask)))
        }
        _ => None,
    }
}

/// `ip` or `ip:port` or `[v6]:port` -> the IP; `None` for host names.
fn api_server_ip(address: &str) -> Option<std::net::IpAddr> {
    let trimmed = address.trim();
    if let Ok(ip) = trimmed.parse() {
        return Some(ip);
    }
    if let Ok(sa) = trimmed.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    trimmed.split('/').next().and_then(|s| s.parse().ok())
}
