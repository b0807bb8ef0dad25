//! Import of the per-file layout this journal replaced: `pending/` and `delivered/` with
//! one `r-<job id>.json` per result. A state dir written by an older job manager must not
//! lose its undelivered results on upgrade.
use super::journal::{self, Entry, Index};
use super::{unavailable, Journal};
use crate::results::store::StoreError;
use common::JobResult;
use std::path::Path;
use std::time::UNIX_EPOCH;

/// Append the legacy results the index does not hold yet (one fsync per directory), then
/// remove that legacy directory. Idempotent: after a crash before the removal, the next
/// open finds them in the index and imports nothing twice. An unreadable legacy file is
/// logged and keeps its directory in place, so nothing is deleted that was not imported.
/// Returns how many results were imported.
pub(super) fn import(dir: &Path, journal: &mut Journal, index: &mut Index) -> Result<usize, StoreError> {
    let mut imported = 0;
    for (sub, delivered) in [("pending", false), ("delivered", true)] {
        let legacy = dir.join(sub);
        let Ok(files) = std::fs::read_dir(&legacy) else {
            continue;
        };
        let mut buf = Vec::new();
        let mut entries = Vec::new();
        let mut all_read = true;
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("r-") && name.ends_with(".json")) {
                continue; // temp files of writes that never completed
            }
            let path = file.path();
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<JobResult>(&b).map_err(|e| e.to_string()));
            let result = match parsed {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "cannot import a result of the old store; its directory is kept");
                    all_read = false;
                    continue;
                }
            };
            if index.get(&result.job_id).is_some() {
                continue;
            }
            let entry = if delivered {
                let at_ms = file
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as u64);
                Entry::DeliveredResult { result, at_ms }
            } else {
                Entry::Recorded { result }
            };
            journal::encode(&entry, &mut buf).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            entries.push(entry);
        }
        if !buf.is_empty() {
            journal.append(&buf).map_err(StoreError::Unavailable)?;
        }
        imported += entries.len();
        for e in entries {
            index.apply(e);
        }
        if all_read {
            std::fs::remove_dir_all(&legacy).map_err(|e| unavailable(&legacy, e))?;
        }
    }
    Ok(imported)
}
