//! Stall detection. A dispatcher that has capacity while jobs wait at the broker, and
//! has dispatched nothing for a while, is broken (a lost counter, a wedged poll) even if
//! every loop still ticks: say so in readiness and metrics instead of idling silently.
use std::collections::BTreeMap;
use std::time::Duration;

/// `Some(reason)` when the dispatcher looks stalled.
pub fn stall_reason(
    depth_by_runtime: &BTreeMap<String, u64>,
    total_depth: u64,
    free: &BTreeMap<String, u32>,
    since_last_dispatch: Duration,
    stall_after: Duration,
) -> Option<String> {
    if since_last_dispatch < stall_after {
        return None;
    }
    // Per runtime when the broker breaks depth down; else any free capacity with jobs waiting.
    let waiting_with_room: Vec<String> = if depth_by_runtime.is_empty() {
        if total_depth > 0 && free.values().any(|f| *f > 0) {
            vec![format!("{total_depth} job(s)")]
        } else {
            Vec::new()
        }
    } else {
        depth_by_runtime
            .iter()
            .filter(|(rt, depth)| **depth > 0 && free.get(*rt).copied().unwrap_or(0) > 0)
            .map(|(rt, depth)| format!("{rt}: {depth} waiting, {} free", free[rt]))
            .collect()
    };
    if waiting_with_room.is_empty() {
        return None;
    }
    Some(format!(
        "dispatcher stalled: jobs wait at the broker with capacity free and nothing dispatched for {}s ({})",
        since_last_dispatch.as_secs(),
        waiting_with_room.join("; ")
    ))
}
