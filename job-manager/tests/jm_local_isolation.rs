//! The local executor's isolation, as root (CI runs as root; elsewhere it is skipped with
//! the reason printed): a hostile runtime tries what a review found it could do when
//! every job ran as the job manager's user in the host network namespace, and reports
//! each attempt in its output; every one must fail, a concurrent job's outcome stays its
//! own, and the runtime still reaches an allowed origin through its sidecar.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod jm_support;

use common::{JobId, Outcome};
use jm_support::*;
use job_manager::app::{App, AppSettings};
use job_manager::backend::local::LocalBackend;
use job_manager::broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the hostile runtime tries. `$1` state dir, `$2` job manager `host:port`, `$3`
/// origin `host:port`, `$4` a host loopback port, `$5` a non-loopback `ip:port` of this
/// machine (or `-`). Each attempt prints `<name>: ok` or `<name>: denied`.
const HOSTILE: &str = r#"
state=$1 jm=$2 origin=$3 direct=$4 wide=$5
proxy=${JOB_API_URL#http://}
try() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "$name: ok"; else echo "$name: denied"; fi; }
readable() { test -n "$(cat "$1" 2>/dev/null)"; }
listable() { ls "$1" >/dev/null 2>&1; }
tcp() { timeout 3 bash -c "exec 3<>/dev/tcp/${1%:*}/${1##*:}"; }
opens() { bash -c "exec 4<'$1'"; }
# One request through the sidecar's proxy; prints the status line.
http() {
  exec 3<>/dev/tcp/${proxy%:*}/${proxy##*:} || { echo "no-proxy"; return; }
  printf '%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n%s' \
    "$1" "$2" "$3" "${#4}" "$5" "$4" >&3
  head -n1 <&3 | tr -d '\r'
  exec 3>&-
}
echo "whoami: $(id -u):$(id -g):$(id -G)"
try up-token readable ../token
try up-sidecar-token readable ../../jobs/j-hostile/sidecar/token
try up-job-file readable ../../jobs/j-hostile/sidecar/job.json
try own-token readable "$state/jobs/j-hostile/sidecar/token"
try own-job-file readable "$state/jobs/j-hostile/sidecar/job.json"
try own-meta readable "$state/jobs/j-hostile/meta.json"
try own-sidecar-log readable "$state/jobs/j-hostile/sidecar.log"
try victim-token readable "$state/jobs/j-victim/sidecar/token"
try victim-job-file readable "$state/jobs/j-victim/sidecar/job.json"
try victim-scratch listable "$state/scratch/j-victim"
try internal-api-key readable "$state/internal-api-key"
try token-signing-key readable "$state/token-signing-key"
try results-dir listable "$state/results"
try state-dir-listing listable "$state"
try jobs-listing listable "$state/jobs"
try scratch-listing listable "$state/scratch"
for p in /proc/[0-9]*; do
  case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in
    */sidecar*) try "sidecar-mem-${p#/proc/}" opens $p/mem; try "sidecar-environ-${p#/proc/}" readable $p/environ;;
  esac
done
try direct-host-loopback tcp "$direct"
if [ "$wide" != - ]; then try direct-host-address tcp "$wide"; fi
echo "interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
echo "ipv4-routes: $(($(wc -l < /proc/net/route) - 1))"
token=$(cat "$state/jobs/j-victim/sidecar/token" 2>/dev/null || echo none)
echo "forge: $(http POST "http://$jm/internal/v1/jobs/victim/result" "$jm" \
  '{"job_id":"victim","outcome":"succeeded","message":"forged by the hostile job"}' "x-job-token: $token"$'\r\n')"
echo "allowed-origin: $(http GET "http://$origin/through-sidecar" "$origin" '' '')"
echo "report-end"
"#;

/// Counts connections accepted on a host port (none may come from the runtime).
fn counting_listener(addr: &str) -> (std::net::SocketAddr, Arc<AtomicU32>) {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    let bound = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU32::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if conn.is_ok() {
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (bound, accepted)
}

/// A non-loopback IPv4 address of this machine: the source address a route would pick.
/// A UDP `connect` only consults the routing table; no packet is sent anywhere.
fn host_address() -> Option<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    probe.connect("192.0.2.1:9").ok()?;
    Some(probe.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_runtime_reaches_nothing_but_its_sidecar() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: the local executor isolates jobs only when the job manager runs as root (CI runs as root)");
        return;
    }
    let dir = TempDir::new("isolation");
    let state = dir.path().join("state");
    let origin = Origin::start().await;
    let origin_addr = origin.url.trim_start_matches("http://").to_string();
    let (direct, direct_hits) = counting_listener("127.0.0.1:0");
    let host_ip = host_address();
    let (wide, wide_hits) = counting_listener("0.0.0.0:0");
    let wide_target = host_ip.map_or("-".to_string(), |ip| format!("{ip}:{}", wide.port()));
    if host_ip.is_none() {
        println!("note: no non-loopback address on this machine; the direct dial to one is not tried");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jm = listener.local_addr().unwrap();

    let script = dir.path().join("hostile.sh");
    std::fs::write(&script, HOSTILE).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let hostile: Vec<String> = ["/bin/bash".to_string(), script.display().to_string(), state.display().to_string()]
        .into_iter()
        .chain([jm.to_string(), origin_addr.clone(), direct.to_string(), wide_target])
        .collect();
    let yaml =
        local_yaml("").replace("sidecar:\n", &format!("  - name: hostile\n    command: {hostile:?}\nsidecar:\n"));
    let v = validated_from(dir.path(), &yaml);
    let broker = EmbeddedBroker::new(EmbeddedOptions {
        visibility_timeout: Duration::from_secs(60),
        location_key: common::secret::Secret::new("k"),
    });
    // The victim runs while the hostile job attacks it, then reports its own outcome.
    broker
        .submit(job(
            "victim",
            60,
            json!({"action": "steps", "steps": [
                {"action": "fetch", "url": format!("{}/victim-started", origin.url), "expectStatus": 200},
                {"action": "sleep", "secs": 5},
                {"action": "fail", "message": "the victim's own result"},
            ]}),
        ))
        .unwrap();
    let backend = LocalBackend::new(&v).unwrap();
    let handle = App::start(AppSettings::from(&v), Arc::new(broker.clone()), backend, listener).await.unwrap();
    assert!(handle.readiness.check().is_ok());
    origin.wait_hit("/victim-started", Duration::from_secs(20)).await;
    let mut attack = job("hostile", 60, json!({}));
    attack.runtime_type = "hostile".into();
    broker.submit(attack).unwrap();
    let results = broker.wait_for_results(2, Duration::from_secs(60)).await;
    handle.stop().await.unwrap();

    let hostile = &results[&JobId::new("hostile").unwrap()];
    let tail = hostile.output["output_tail"].as_str().unwrap_or_default().to_string();
    assert!(tail.contains("report-end"), "the hostile runtime ran to its end: {hostile:?}");
    println!("the hostile runtime's report:\n{tail}");
    let report: BTreeMap<&str, &str> = tail.lines().filter_map(|l| l.split_once(": ")).collect();

    let ids: Vec<u32> = report["whoami"].split([':', ' ']).map(|n| n.parse().unwrap()).collect();
    assert!(ids.iter().all(|&id| id >= 1_000_000), "its own UID and GID, no other groups: {}", report["whoami"]);
    let attempts: Vec<(&str, &str)> =
        report.iter().filter(|(_, v)| **v == "ok" || **v == "denied").map(|(k, v)| (*k, *v)).collect();
    for name in [
        "up-token",
        "up-sidecar-token",
        "up-job-file",
        "own-token",
        "own-job-file",
        "own-meta",
        "own-sidecar-log",
        "victim-token",
        "victim-job-file",
        "victim-scratch",
        "internal-api-key",
        "token-signing-key",
        "results-dir",
        "state-dir-listing",
        "jobs-listing",
        "scratch-listing",
        "direct-host-loopback",
    ] {
        assert_eq!(report.get(name), Some(&"denied"), "{name}: {tail}");
    }
    if host_ip.is_some() {
        assert_eq!(report.get("direct-host-address"), Some(&"denied"), "{tail}");
    }
    let sidecar_probes = attempts.iter().filter(|(k, _)| k.starts_with("sidecar-")).count();
    assert!(sidecar_probes >= 4, "both sidecars' mem and environ were tried: {tail}");
    let succeeded: Vec<_> = attempts.iter().filter(|(_, v)| *v == "ok").collect();
    assert!(succeeded.is_empty(), "every attempt must fail, these did not: {succeeded:?}\n{tail}");
    assert_eq!(report["interfaces"].trim(), "lo", "only loopback in the runtime's network namespace");
    assert_eq!(report["ipv4-routes"], "0", "no route out of it");
    assert_eq!(direct_hits.load(Ordering::SeqCst), 0, "nothing reached the host's loopback directly");
    assert_eq!(wide_hits.load(Ordering::SeqCst), 0, "nothing reached the host's address directly");

    assert!(!report["forge"].contains(" 20"), "the forged result was refused: {}", report["forge"]);
    let victim = &results[&JobId::new("victim").unwrap()];
    assert_eq!((victim.outcome, victim.message.as_str()), (Outcome::Failed, "step 3: the victim's own result"));
    let c = broker.counters(&JobId::new("victim").unwrap()).unwrap();
    assert_eq!((c.results_accepted, c.results_conflicting), (1, 0), "{c:?}");

    assert_eq!(report["allowed-origin"], "HTTP/1.1 200 OK", "{tail}");
    assert_eq!(origin.hits("/through-sidecar"), 1, "the allowed origin was reached through the sidecar");
    let left: Vec<_> = std::fs::read_dir(state.join("scratch")).unwrap().collect();
    assert!(left.is_empty(), "scratch dirs are removed with their jobs: {left:?}");
}

/// Not root: the same jobs run, and the backend says once that they are not isolated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_root_the_missing_isolation_is_reported() {
    use job_manager::backend::Backend;
    let dir = TempDir::new("gaps");
    let backend = LocalBackend::new(&validated(dir.path(), "")).unwrap();
    let gaps = backend.isolation_gaps();
    if nix::unistd::geteuid().is_root() {
        assert_eq!(gaps, Vec::<String>::new(), "isolated as root: no gap");
    } else {
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert!(gaps[0].contains("jobs are not isolated from each other or from the job manager"), "{gaps:?}");
    }
}
