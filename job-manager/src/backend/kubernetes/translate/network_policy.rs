//! The runtime NetworkPolicy (applied by the `service-setup` holder when enabled).
use super::TranslateSettings;
use crate::backend::kubernetes::labels;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Cloud metadata endpoints blocked by the runtime NetworkPolicy (`restrictMetadataService`):
/// the IPv4 link-local one every major cloud uses, and AWS's IPv6 one (the chart's own
/// NetworkPolicy blocks the same pair for the job manager).
pub const METADATA_CIDR: &str = "169.254.169.254/32";
pub const METADATA_CIDR_V6: &str = "fd00:ec2::254/128";

/// The runtime NetworkPolicy: runtime pods accept ingress only from job-manager pods (on
/// the sidecar's ingress port), and may reach DNS, the job manager, and anything else
/// except cloud metadata (when `restrictMetadataService`) and the API server addresses.
/// Finer egress policy (private ranges, hosts) is the sidecar's job.
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
        except_v4.push(METADATA_CIDR.to_string());
        except_v6.push(METADATA_CIDR_V6.to_string());
    }
    for address in &settings.sidecar.api_server_addresses {
        match api_server_ip(address) {
            Some(std::net::IpAddr::V4(ip)) => except_v4.push(format!("{ip}/32")),
            Some(std::net::IpAddr::V6(ip)) => except_v6.push(format!("{ip}/128")),
            None => {} // a host name: only the sidecar can refuse it (it resolves names)
        }
    }
    except_v4.dedup();
    except_v6.dedup();
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
