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
/// `batch_size` in total. The batch is dealt one job at a time, round robin over the
/// runtime types with room, starting at `start` (the caller rotates it every poll): a
/// type whose room alone exceeds the batch must not starve the types after it, which
/// would leave their jobs waiting at the broker with capacity free. Runtimes with no
/// room are left out; an empty answer means "do not poll".
pub fn demands(
    free: &BTreeMap<String, u32>,
    order: &[RuntimeLimit],
    batch_size: u32,
    start: usize,
) -> Vec<RuntimeDemand> {
    let n = order.len();
    let mut room: Vec<u32> = order.iter().map(|r| free.get(&r.name).copied().unwrap_or(0)).collect();
    let mut granted = vec![0u32; n];
    let mut left = batch_size;
    while left > 0 && room.iter().any(|&r| r > 0) {
        for k in 0..n {
            let i = (start + k) % n;
            if left > 0 && room[i] > 0 {
                room[i] -= 1;
                granted[i] += 1;
                left -= 1;
            }
        }
    }
    order
        .iter()
        .zip(granted)
        .filter(|(_, max)| *max > 0)
        .map(|(r, max)| RuntimeDemand { runtime_type: r.name.clone(), max })
        .collect()
}
