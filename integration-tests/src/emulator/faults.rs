//! Fault injection: rules matched per verb and resource, applied for N requests or
//! with a probability. Controlled in-process (`Emulator::faults()`) or over HTTP
//! (`/emulator/faults`) for the standalone binary.
use rand::RngExt as _;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "type")]
pub enum Fault {
    /// Delay the request, then serve it normally.
    Latency { millis: u64 },
    /// 429 TooManyRequests with `Retry-After`.
    TooManyRequests { retry_after_secs: u32 },
    /// 500 InternalError.
    InternalError,
    /// 409 Conflict on update/patch, as if someone else wrote first.
    Conflict,
    /// Watches: close the stream after this long (0 = right after the initial events).
    DropWatch { after_millis: u64 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultRule {
    /// `create get list watch update patch delete deletecollection`; `None` = any.
    #[serde(default)]
    pub verb: Option<String>,
    /// Plural resource name (`pods`, `jobs`, ...); `None` = any.
    #[serde(default)]
    pub resource: Option<String>,
    pub fault: Fault,
    /// Apply to this many matching requests, then retire; `None` = unlimited.
    #[serde(default)]
    pub times: Option<u32>,
    /// Chance (0..=1) that a matching request is hit; `None` = always.
    #[serde(default)]
    pub probability: Option<f64>,
}

impl FaultRule {
    pub fn new(fault: Fault) -> Self {
        Self { verb: None, resource: None, fault, times: None, probability: None }
    }
    pub fn verb(mut self, v: &str) -> Self {
        self.verb = Some(v.into());
        self
    }
    pub fn resource(mut self, r: &str) -> Self {
        self.resource = Some(r.into());
        self
    }
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = Some(p);
        self
    }

    fn matches(&self, verb: &str, resource: &str) -> bool {
        let conflict_ok = !matches!(self.fault, Fault::Conflict) || matches!(verb, "update" | "patch");
        let watch_ok = !matches!(self.fault, Fault::DropWatch { .. }) || verb == "watch";
        conflict_ok
            && watch_ok
            && self.verb.as_deref().is_none_or(|v| v == verb)
            && self.resource.as_deref().is_none_or(|r| r == resource)
    }
}

/// The active rules plus a count of faults served (tests assert they happened).
#[derive(Default)]
pub struct Faults {
    rules: Mutex<Vec<FaultRule>>,
    injected: Mutex<u64>,
}

impl Faults {
    pub fn add(&self, rule: FaultRule) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).push(rule);
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn rules(&self) -> Vec<FaultRule> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many requests a fault was injected into so far.
    pub fn injected(&self) -> u64 {
        *self.injected.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The faults to apply to one request (a latency may precede an error).
    pub fn pick(&self, verb: &str, resource: &str) -> Vec<Fault> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let mut rng = rand::rng();
        for r in rules.iter_mut() {
            if !r.matches(verb, resource) || r.times == Some(0) {
                continue;
            }
            if let Some(p) = r.probability {
                if rng.random::<f64>() >= p {
                    continue;
                }
            }
            if let Some(t) = r.times.as_mut() {
                *t -= 1;
            }
            let terminal = !matches!(r.fault, Fault::Latency { .. });
            out.push(r.fault.clone());
            if terminal {
                break;
            }
        }
        rules.retain(|r| r.times != Some(0));
        if !out.is_empty() {
            *self.injected.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        }
        out
    }
}

pub fn latency(faults: &[Fault]) -> Option<Duration> {
    faults.iter().find_map(|f| match f {
        Fault::Latency { millis } => Some(Duration::from_millis(*millis)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_verb_and_resource_and_retire_after_n() {
        let f = Faults::default();
        f.add(FaultRule::new(Fault::InternalError).verb("create").resource("pods").times(2));
        assert!(f.pick("get", "pods").is_empty());
        assert!(f.pick("create", "jobs").is_empty());
        assert_eq!(f.pick("create", "pods"), vec![Fault::InternalError]);
        assert_eq!(f.pick("create", "pods"), vec![Fault::InternalError]);
        assert!(f.pick("create", "pods").is_empty());
        assert!(f.rules().is_empty());
        assert_eq!(f.injected(), 2);
    }

    #[test]
    fn conflicts_only_hit_writes_that_can_conflict() {
        let f = Faults::default();
        f.add(FaultRule::new(Fault::Conflict));
        assert!(f.pick("create", "leases").is_empty());
        assert_eq!(f.pick("patch", "leases"), vec![Fault::Conflict]);
    }

    #[test]
    fn probability_zero_never_fires_and_one_always_does() {
        let f = Faults::default();
        f.add(FaultRule::new(Fault::TooManyRequests { retry_after_secs: 1 }).probability(0.0));
        assert!((0..100).all(|_| f.pick("get", "pods").is_empty()));
        f.clear();
        f.add(FaultRule::new(Fault::TooManyRequests { retry_after_secs: 1 }).probability(1.0));
        assert!((0..100).all(|_| !f.pick("get", "pods").is_empty()));
    }

    #[test]
    fn rules_round_trip_as_json_for_the_admin_endpoint() {
        let r: FaultRule = serde_json::from_str(
            r#"{"verb":"create","fault":{"type":"tooManyRequests","retryAfterSecs":2},"times":3}"#,
        )
        .unwrap();
        assert_eq!(r, FaultRule::new(Fault::TooManyRequests { retry_after_secs: 2 }).verb("create").times(3));
    }
}
