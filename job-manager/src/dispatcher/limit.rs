//! Limit: how many jobs to ask the broker for, per runtime type. Pure.
use common::broker::RuntimeDemand;
use common::JobId;
use std::collections::BTreeMap;

/// A runtime type this job manager runs, and how many of its jobs may run at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeLimit {
    pub name: String,
    pub parallelism: u32,
}

/// Free capacity per runtime type: parallelism minus jobs running (executor state) minus
/// jobs being handed off right now (polled, not yet started).
pub fn free_capacity(
    runtimes: &[RuntimeLimit],
    in_flight: &BTreeMap<String, Vec<JobId>>,
    handing_off: &BTreeMap<String, usize>,
) -> BTreeMap<String, u32> {
    runtimes
        .iter()
        .map(|r| {
            let busy = in_flight.get(&r.name).map_or(0, Vec::len) + handing_off.get(&r.name).copied().unwrap_or(0);
            (r.name.clone(), r.parallelism.saturating_sub(busy.min(u32::MAX as usize) as u32))
        })
        .collect()
}

/// The poll's demands: never more than free capacity per runtime type, never more than
/// `batch_size` in total (shared in configuration order). Runtimes with no room are
/// left out; an empty answer means "do not poll".
pub fn demands(free: &BTreeMap<String, u32>, order: &[RuntimeLimit], batch_size: u32) -> Vec<RuntimeDemand> {
    let mut left = batch_size;
    let mut out = Vec::new();
    for r in order {
        let room = free.get(&r.name).copied().unwrap_or(0).min(left);
        if room > 0 {
            out.push(RuntimeDemand { runtime_type: r.name.clone(), max: room });
            left -= room;
        }
    }
    out
}
