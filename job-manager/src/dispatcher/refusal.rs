//! Hand-offs the platform refuses for good ([`crate::backend::HandoffError::Refused`]:
//! the job manager's Role lacks a right). Such a job is released to the broker (another
//! replica, or this one once the Role is fixed, can run it), but no job of that runtime
//! type can start here meanwhile: the job manager is not ready, `/readyz` names the
//! missing right, and the log says it once per distinct right. The refusal of a runtime
//! type lasts until a hand-off of that runtime type succeeds (each type always needs the
//! same rights, so its success proves them). Pure: the dispatcher feeds it each hand-off's
//! outcome and acts on the [`Change`].
use std::collections::{BTreeMap, BTreeSet};

/// What a hand-off outcome changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A right no runtime type was refused until now: log it (once) and turn unready.
    Refused,
    /// Nothing new to say (the same refusal again, or a success with none pending).
    Same,
    /// This runtime type was refused and is not any more: log the recovery. `right` is
    /// the right it was refused; `cleared` tells whether no other runtime type still
    /// waits for the same right.
    Recovered { right: String, cleared: bool },
}

/// The refusals in force, per runtime type: (right, message).
#[derive(Debug, Default)]
pub struct Refusals {
    by_runtime: BTreeMap<String, (String, String)>,
}

impl Refusals {
    /// A hand-off of `runtime` was refused `right` (`message` tells the whole story).
    pub fn refused(&mut self, runtime: &str, right: &str, message: &str) -> Change {
        let known = self.by_runtime.values().any(|(r, _)| r == right);
        self.by_runtime.insert(runtime.to_string(), (right.to_string(), message.to_string()));
        if known {
            Change::Same
        } else {
            Change::Refused
        }
    }

    /// A hand-off of `runtime` succeeded.
    pub fn handed_off(&mut self, runtime: &str) -> Change {
        match self.by_runtime.remove(runtime) {
            Some((right, _)) => {
                let cleared = !self.by_runtime.values().any(|(r, _)| *r == right);
                Change::Recovered { right, cleared }
            }
            None => Change::Same,
        }
    }

    pub fn is_refused(&self, runtime: &str) -> bool {
        self.by_runtime.contains_key(runtime)
    }

    /// What `/readyz` says while any hand-off is refused: each distinct refusal once
    /// (its newest message), with the runtime types waiting for it.
    pub fn readiness(&self) -> Option<String> {
        if self.by_runtime.is_empty() {
            return None;
        }
        let mut by_right: BTreeMap<&str, (BTreeSet<&str>, &str)> = BTreeMap::new();
        for (runtime, (right, message)) in &self.by_runtime {
            let entry = by_right.entry(right).or_insert_with(|| (BTreeSet::new(), message));
            entry.0.insert(runtime);
            entry.1 = message;
        }
        let parts: Vec<String> = by_right
            .values()
            .map(|(runtimes, message)| {
                let names: Vec<&str> = runtimes.iter().copied().collect();
                format!("hand-offs of {} are refused: {message}", names.join(", "))
            })
            .collect();
        Some(parts.join("; "))
    }

    /// Free capacity while refused: at most one job per poll of a refused runtime type,
    /// a probe whose success clears the refusal. Asking for more would only take jobs
    /// from replicas that can run them and send the API server a burst of 403s.
    pub fn cap_free(&self, free: &mut BTreeMap<String, u32>) {
        for (runtime, room) in free.iter_mut() {
            if self.is_refused(runtime) {
                *room = (*room).min(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOBS: &str = r#"create jobs.batch in namespace "default""#;
    const RECORDS: &str = r#"create jobrecords.jobs.jobmanager.dev in namespace "default""#;

    #[test]
    fn a_refusal_is_new_once_per_right_and_readiness_names_it() {
        let mut r = Refusals::default();
        assert_eq!(r.readiness(), None);
        assert_eq!(r.refused("api", JOBS, "no jobs (1)"), Change::Refused);
        assert_eq!(r.refused("api", JOBS, "no jobs (2)"), Change::Same, "said once");
        assert_eq!(r.refused("browser", RECORDS, "no records"), Change::Refused, "another right is news");
        assert_eq!(r.refused("script", RECORDS, "no records"), Change::Same, "the same right for another type");
        assert!(r.is_refused("api") && !r.is_refused("other"));
        assert_eq!(
            r.readiness().unwrap(),
            "hand-offs of browser, script are refused: no records; hand-offs of api are refused: no jobs (2)",
            "in the order of the rights"
        );
    }

    #[test]
    fn a_success_of_the_same_runtime_type_clears_it() {
        let mut r = Refusals::default();
        assert_eq!(r.handed_off("api"), Change::Same, "nothing pending");
        r.refused("api", RECORDS, "no records");
        r.refused("browser", RECORDS, "no records");
        r.refused("other", JOBS, "no jobs");
        assert_eq!(r.handed_off("api"), Change::Recovered { right: RECORDS.into(), cleared: false });
        assert_eq!(
            r.readiness().unwrap(),
            "hand-offs of browser are refused: no records; hand-offs of other are refused: no jobs"
        );
        assert_eq!(r.handed_off("browser"), Change::Recovered { right: RECORDS.into(), cleared: true });
        assert_eq!(r.handed_off("other"), Change::Recovered { right: JOBS.into(), cleared: true });
        assert_eq!(r.readiness(), None, "ready again");
        assert_eq!(r.refused("api", RECORDS, "again"), Change::Refused, "a refusal after recovery is news again");
    }

    #[test]
    fn a_refused_runtime_type_is_polled_one_job_at_a_time() {
        let mut r = Refusals::default();
        r.refused("api", JOBS, "no jobs");
        let mut free = BTreeMap::from([("api".to_string(), 25), ("browser".to_string(), 8), ("full".to_string(), 0)]);
        r.cap_free(&mut free);
        assert_eq!(free, BTreeMap::from([("api".to_string(), 1), ("browser".to_string(), 8), ("full".to_string(), 0)]));
        let mut none = BTreeMap::from([("api".to_string(), 0)]);
        r.cap_free(&mut none);
        assert_eq!(none["api"], 0, "no room stays no room");
    }
}
