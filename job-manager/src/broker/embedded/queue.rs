//! The embedded broker's queue as a pure state machine: every operation takes the current
//! instant, so tests drive visibility timeouts with a fake clock and no sleeping.
//!
//! Life of a job:
//! ```text
//! submit -> Waiting --poll--> Leased{attempt, until} --ack--> Acked{attempt} --result--> Done
//!              ^                  |  lease expires (not acked)      |
//!              +------------------+  or release                     |
//!              +-----------------------------------release----------+
//! ```
//! An acked job is never re-delivered by timeout: the consumer holds a runtime for it and
//! owes the broker exactly one outcome (a result or a release). A result is accepted in any
//! state (a fast runtime's result can arrive before the ack call returns) and is final.
use common::broker::{PollRequest, QueueStats};
use common::{Job, JobId, JobResult};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("unknown job {0}")]
    NotFound(JobId),
    #[error("job {id}: attempt {presented} is not the current lease ({current})")]
    LeaseLost { id: JobId, presented: u32, current: String },
    #[error("job {0} already has a different result")]
    ResultConflict(JobId),
    #[error("job {0} was submitted before")]
    Duplicate(JobId),
}

impl QueueError {
    /// Stable label, used as the `error` field of the HTTP [`common::broker::ErrorBody`].
    pub fn label(&self) -> &'static str {
        match self {
            QueueError::NotFound(_) => "not_found",
            QueueError::LeaseLost { .. } => "lease_lost",
            QueueError::ResultConflict(_) => "conflict",
            QueueError::Duplicate(_) => "duplicate",
        }
    }
}

/// Where a job is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Waiting,
    Leased { consumer: String, attempt: u32, until: Instant },
    Acked { consumer: String, attempt: u32 },
    Done,
}

/// Per-job counters, so tests can assert "delivered once, exactly one outcome".
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct JobCounters {
    /// Times the job was handed out by a poll (first delivery and re-deliveries).
    pub deliveries: u32,
    /// Lease expiries that made the job visible again without an ack.
    pub redeliveries_by_timeout: u32,
    pub acks: u32,
    pub releases: u32,
    /// Result submissions the broker accepted (the first one plus identical repeats).
    pub results_accepted: u32,
    /// Result submissions refused because a different result was already stored.
    pub results_conflicting: u32,
}

#[derive(Debug)]
struct Entry {
    job: Job,
    submitted_at: Instant,
    state: JobState,
    result: Option<JobResult>,
    counters: JobCounters,
    /// Set when a lease ran out unacked and nobody has taken the job since: a late ack of
    /// that attempt is still honoured.
    expired_attempt: Option<u32>,
    /// The job's place in its runtime type's waiting line, while it waits.
    waiting_pos: Option<i64>,
}

/// Waiting jobs, indexed so that every queue operation stays O(log n) with many
/// thousands of jobs queued (benchmarks queue 100k): a line per runtime type ordered by
/// position (released and expired jobs get positions before every other job), and an
/// age index for the oldest waiting job.
#[derive(Debug, Default)]
struct WaitingLines {
    by_runtime: BTreeMap<String, BTreeMap<i64, JobId>>,
    by_age: BTreeSet<(Instant, JobId)>,
    next_front: i64,
    next_back: i64,
}

impl WaitingLines {
    fn push(&mut self, e: &mut Entry, front: bool) {
        let pos = if front {
            self.next_front -= 1;
            self.next_front
        } else {
            self.next_back += 1;
            self.next_back
        };
        self.by_runtime.entry(e.job.runtime_type.clone()).or_default().insert(pos, e.job.id.clone());
        self.by_age.insert((e.submitted_at, e.job.id.clone()));
        e.waiting_pos = Some(pos);
    }

    fn remove(&mut self, e: &mut Entry) {
        if let Some(pos) = e.waiting_pos.take() {
            if let Some(line) = self.by_runtime.get_mut(&e.job.runtime_type) {
                line.remove(&pos);
            }
            self.by_age.remove(&(e.submitted_at, e.job.id.clone()));
        }
    }

    fn first(&self, runtime_type: &str) -> Option<JobId> {
        self.by_runtime.get(runtime_type).and_then(|line| line.values().next().cloned())
    }

    fn len(&self) -> usize {
        self.by_age.len()
    }
}

/// The queue. Not thread-safe by itself: [`super::EmbeddedBroker`] wraps it in a mutex.
#[derive(Debug)]
pub struct BrokerQueue {
    visibility_timeout: Duration,
    entries: BTreeMap<JobId, Entry>,
    waiting: WaitingLines,
    /// Unacked leases by expiry, so expiring them looks only at the expired ones.
    leases: BTreeSet<(Instant, JobId)>,
    results_stored: usize,
}

impl BrokerQueue {
    pub fn new(visibility_timeout: Duration) -> Self {
        Self {
            visibility_timeout,
            entries: BTreeMap::new(),
            waiting: WaitingLines::default(),
            leases: BTreeSet::new(),
            results_stored: 0,
        }
    }

    pub fn visibility_timeout(&self) -> Duration {
        self.visibility_timeout
    }

    /// Queue a new job. The broker owns `attempt`: it starts at 0 deliveries.
    pub fn submit(&mut self, job: Job, now: Instant) -> Result<(), QueueError> {
        if self.entries.contains_key(&job.id) {
            return Err(QueueError::Duplicate(job.id));
        }
        let mut entry = Entry {
            job,
            submitted_at: now,
            state: JobState::Waiting,
            result: None,
            counters: JobCounters::default(),
            expired_attempt: None,
            waiting_pos: None,
        };
        self.waiting.push(&mut entry, false);
        self.entries.insert(entry.job.id.clone(), entry);
        Ok(())
    }

    /// Leave the leased state (ack, release, result): forget the lease's expiry.
    fn drop_lease(leases: &mut BTreeSet<(Instant, JobId)>, e: &Entry) {
        if let JobState::Leased { until, .. } = e.state {
            leases.remove(&(until, e.job.id.clone()));
        }
    }

    /// Make jobs whose lease ran out without an ack visible again, ahead of the jobs that
    /// never were delivered (they have waited longest), earliest expiry first.
    fn expire_leases(&mut self, now: Instant) {
        let mut expired = Vec::new();
        while let Some(first) = self.leases.first() {
            if first.0 > now {
                break;
            }
            expired.push(self.leases.pop_first().expect("first exists").1);
        }
        for id in expired.into_iter().rev() {
            if let Some(e) = self.entries.get_mut(&id) {
                if let JobState::Leased { attempt, .. } = e.state {
                    e.expired_attempt = Some(attempt);
                    e.state = JobState::Waiting;
                    e.counters.redeliveries_by_timeout += 1;
                    self.waiting.push(e, true);
                }
            }
        }
    }

    /// Lease up to `max` waiting jobs per demanded runtime type, oldest first. Each
    /// returned job carries its attempt number (1 on first delivery).
    pub fn poll(&mut self, req: &PollRequest, now: Instant) -> Vec<Job> {
        self.expire_leases(now);
        let mut out = Vec::new();
        for demand in &req.demands {
            for _ in 0..demand.max {
                let Some(id) = self.waiting.first(&demand.runtime_type) else { break };
                let entry = self.entries.get_mut(&id).expect("waiting ids have entries");
                self.waiting.remove(entry);
                entry.counters.deliveries += 1;
                entry.expired_attempt = None;
                let attempt = entry.counters.deliveries;
                let until = now + self.visibility_timeout;
                entry.state = JobState::Leased { consumer: req.consumer.clone(), attempt, until };
                self.leases.insert((until, id));
                let mut job = entry.job.clone();
                job.attempt = attempt;
                out.push(job);
            }
        }
        out
    }

    fn current_attempt(e: &Entry) -> Option<u32> {
        match &e.state {
            JobState::Leased { attempt, .. } | JobState::Acked { attempt, .. } => Some(*attempt),
            JobState::Waiting | JobState::Done => None,
        }
    }

    fn lease_lost(id: &JobId, presented: u32, e: &Entry) -> QueueError {
        let current = match &e.state {
            JobState::Waiting => "waiting".to_string(),
            JobState::Done => "done".to_string(),
            JobState::Leased { attempt, .. } => format!("leased, attempt {attempt}"),
            JobState::Acked { attempt, .. } => format!("acked, attempt {attempt}"),
        };
        QueueError::LeaseLost { id: id.clone(), presented, current }
    }

    /// The consumer handed the job to a runtime. Acking the current attempt again is a
    /// no-op; acking after the job's result arrived is accepted (the result raced the ack).
    pub fn ack(&mut self, id: &JobId, consumer: &str, attempt: u32, now: Instant) -> Result<(), QueueError> {
        self.expire_leases(now);
        let e = self.entries.get_mut(id).ok_or_else(|| QueueError::NotFound(id.clone()))?;
        match &e.state {
            JobState::Leased { attempt: a, .. } | JobState::Acked { attempt: a, .. } if *a == attempt => {
                if matches!(e.state, JobState::Leased { .. }) {
                    e.counters.acks += 1;
                }
                Self::drop_lease(&mut self.leases, e);
                e.state = JobState::Acked { consumer: consumer.to_string(), attempt };
                Ok(())
            }
            JobState::Done if e.counters.deliveries == attempt => Ok(()),
            // The lease expired but nobody took the job since: the consumer did start it,
            // so taking it back out of the queue avoids a second run.
            JobState::Waiting if e.expired_attempt == Some(attempt) => {
                self.waiting.remove(e);
                e.expired_attempt = None;
                e.counters.acks += 1;
                e.state = JobState::Acked { consumer: consumer.to_string(), attempt };
                Ok(())
            }
            _ => Err(Self::lease_lost(id, attempt, e)),
        }
    }

    /// The consumer could not hand the job off: make it visible again at once.
    pub fn release(&mut self, id: &JobId, attempt: u32, now: Instant) -> Result<(), QueueError> {
        self.expire_leases(now);
        let e = self.entries.get_mut(id).ok_or_else(|| QueueError::NotFound(id.clone()))?;
        if Self::current_attempt(e) != Some(attempt) {
            return Err(Self::lease_lost(id, attempt, e));
        }
        Self::drop_lease(&mut self.leases, e);
        e.state = JobState::Waiting;
        e.expired_attempt = None;
        e.counters.releases += 1;
        self.waiting.push(e, true);
        Ok(())
    }

    /// Store a job's result. Idempotent: an identical repeat is accepted, a different one
    /// is a conflict. The result is final: the job leaves the queue.
    pub fn submit_result(&mut self, result: JobResult, now: Instant) -> Result<(), QueueError> {
        self.expire_leases(now);
        let id = result.job_id.clone();
        let e = self.entries.get_mut(&id).ok_or_else(|| QueueError::NotFound(id.clone()))?;
        if let Some(stored) = &e.result {
            if stored.same_as(&result) {
                e.counters.results_accepted += 1;
                return Ok(());
            }
            e.counters.results_conflicting += 1;
            return Err(QueueError::ResultConflict(id));
        }
        self.waiting.remove(e);
        Self::drop_lease(&mut self.leases, e);
        e.state = JobState::Done;
        e.result = Some(result);
        e.counters.results_accepted += 1;
        self.results_stored += 1;
        Ok(())
    }

    pub fn stats(&mut self, now: Instant) -> QueueStats {
        self.expire_leases(now);
        let depth_by_runtime = self
            .waiting
            .by_runtime
            .iter()
            .filter(|(_, line)| !line.is_empty())
            .map(|(rt, line)| (rt.clone(), line.len() as u64))
            .collect();
        let oldest = self.waiting.by_age.first().map(|(at, _)| *at);
        QueueStats {
            depth: self.waiting.len() as u64,
            depth_by_runtime,
            oldest_age_secs: oldest.map_or(0.0, |o| now.saturating_duration_since(o).as_secs_f64()),
        }
    }

    pub fn result(&self, id: &JobId) -> Option<JobResult> {
        self.entries.get(id).and_then(|e| e.result.clone())
    }

    /// How many jobs have a result (cheap, unlike [`BrokerQueue::results`]).
    pub fn result_count(&self) -> usize {
        self.results_stored
    }

    pub fn results(&self) -> BTreeMap<JobId, JobResult> {
        self.entries.iter().filter_map(|(id, e)| e.result.clone().map(|r| (id.clone(), r))).collect()
    }

    pub fn state(&self, id: &JobId) -> Option<JobState> {
        self.entries.get(id).map(|e| e.state.clone())
    }

    pub fn counters(&self, id: &JobId) -> Option<JobCounters> {
        self.entries.get(id).map(|e| e.counters.clone())
    }

    pub fn all_counters(&self) -> BTreeMap<JobId, JobCounters> {
        self.entries.iter().map(|(id, e)| (id.clone(), e.counters.clone())).collect()
    }

    pub fn job_ids(&self) -> Vec<JobId> {
        self.entries.keys().cloned().collect()
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
