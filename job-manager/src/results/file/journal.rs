//! The result journal's on-disk format and its in-memory index, both pure: no I/O here,
//! so framing, recovery and the first-writer-wins decisions are unit-tested directly.
//!
//! A journal is a sequence of frames `[len: u32 LE][crc32: u32 LE][payload: len bytes]`
//! whose payload is one JSON [`Entry`]. JSON keeps the file readable with ordinary tools;
//! the checksum (not JSON parsing) is what tells a torn or corrupt frame from a good one.
use common::{JobId, JobResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

pub(super) const FRAME_HEADER: usize = 8;
/// Larger frames are refused when written and treated as corruption when read: a garbage
/// length must not make recovery wait for gigabytes that will never come.
pub(super) const MAX_PAYLOAD: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Entry {
    /// The first result for a job: pending delivery.
    Recorded { result: JobResult },
    /// The broker took the job's result at `at_ms` (unix milliseconds).
    Delivered { job_id: JobId, at_ms: u64 },
    /// Written by compaction: a delivered result kept so late repeats are still recognised.
    DeliveredResult { result: JobResult, at_ms: u64 },
}

/// Append `entry` as one frame to `out`; returns the frame's length.
pub(super) fn encode(entry: &Entry, out: &mut Vec<u8>) -> Result<usize, PayloadTooLarge> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    serde_json::to_writer(&mut *out, entry).expect("journal entries serialize");
    let len = out.len() - start - FRAME_HEADER;
    if len > MAX_PAYLOAD {
        out.truncate(start);
        return Err(PayloadTooLarge(len));
    }
    let crc = crc32(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(out.len() - start)
}

#[derive(Debug, thiserror::Error)]
#[error("result too large for the journal ({0} bytes encoded, limit {MAX_PAYLOAD})")]
pub(super) struct PayloadTooLarge(pub usize);

/// What a journal's bytes hold: the entries of every intact frame, in order, and how many
/// leading bytes they span. Anything after `valid_len` is a torn tail (a batch whose write
/// was cut short: it was never fsynced, so none of its results was ever acknowledged).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Replay {
    pub entries: Vec<Entry>,
    pub valid_len: usize,
}

/// Decode frames until the first incomplete, oversized, checksum-failing or undecodable one.
pub(super) fn replay(bytes: &[u8]) -> Replay {
    let mut out = Replay::default();
    let mut pos = 0;
    while bytes.len() - pos >= FRAME_HEADER {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD || bytes.len() - pos - FRAME_HEADER < len {
            break;
        }
        let payload = &bytes[pos + FRAME_HEADER..pos + FRAME_HEADER + len];
        if crc32(payload) != crc {
            break;
        }
        let Ok(entry) = serde_json::from_slice(payload) else {
            break;
        };
        out.entries.push(entry);
        pos += FRAME_HEADER + len;
    }
    out.valid_len = pos;
    out
}

/// One job's result as the store knows it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Stored {
    pub result: JobResult,
    /// When the broker took it (unix ms); `None` while pending.
    pub delivered_at_ms: Option<u64>,
}

/// Every result the journal holds, by job id, plus the pending ones in job-id order (the
/// order the delivery loop has always seen). Duplicate and conflict checks read only this.
#[derive(Debug, Default)]
pub(super) struct Index {
    results: HashMap<JobId, Stored>,
    pending: BTreeSet<JobId>,
}

impl Index {
    pub fn from_entries(entries: impl IntoIterator<Item = Entry>) -> Self {
        let mut index = Self::default();
        for e in entries {
            index.apply(e);
        }
        index
    }

    pub fn get(&self, id: &JobId) -> Option<&Stored> {
        self.results.get(id)
    }

    /// Apply one (already durable) entry. A second `Recorded` for a job cannot be written
    /// by the store; were one ever found, the first still wins.
    pub fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::Recorded { result } => {
                if !self.results.contains_key(&result.job_id) {
                    self.pending.insert(result.job_id.clone());
                    self.results.insert(result.job_id.clone(), Stored { result, delivered_at_ms: None });
                }
            }
            Entry::Delivered { job_id, at_ms } => {
                if let Some(stored) = self.results.get_mut(&job_id) {
                    stored.delivered_at_ms.get_or_insert(at_ms);
                    self.pending.remove(&job_id);
                }
            }
            Entry::DeliveredResult { result, at_ms } => {
                self.pending.remove(&result.job_id);
                self.results.insert(result.job_id.clone(), Stored { result, delivered_at_ms: Some(at_ms) });
            }
        }
    }

    pub fn pending(&self) -> Vec<JobResult> {
        self.pending.iter().filter_map(|id| self.results.get(id)).map(|s| s.result.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.results.len()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Forget delivered results delivered at or before `cutoff_ms`; returns how many.
    pub fn forget_delivered_before(&mut self, cutoff_ms: u64) -> usize {
        let before = self.results.len();
        self.results.retain(|_, s| s.delivered_at_ms.is_none_or(|at| at > cutoff_ms));
        before - self.results.len()
    }

    /// The entries a compacted journal holds: one per result, pending ones as `Recorded`.
    pub fn snapshot(&self) -> impl Iterator<Item = Entry> + '_ {
        self.results.values().map(|s| match s.delivered_at_ms {
            None => Entry::Recorded { result: s.result.clone() },
            Some(at_ms) => Entry::DeliveredResult { result: s.result.clone(), at_ms },
        })
    }
}

/// CRC-32 (IEEE 802.3, as in zlib and gzip): catches torn and bit-flipped frames; a table
/// here is a few lines, cheaper than a dependency.
pub(super) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use common::Outcome;

    fn result(id: &str, msg: &str) -> JobResult {
        JobResult::new(JobId::new(id).unwrap(), Outcome::Succeeded, msg)
    }

    fn frames(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            encode(e, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn replay_round_trips_and_stops_at_a_torn_or_corrupt_tail() {
        let entries = vec![
            Entry::Recorded { result: result("a", "x") },
            Entry::Delivered { job_id: JobId::new("a").unwrap(), at_ms: 7 },
            Entry::Recorded { result: result("b", "y") },
        ];
        let bytes = frames(&entries);
        assert_eq!(replay(&bytes), Replay { entries: entries.clone(), valid_len: bytes.len() });
        let first_two = frames(&entries[..2]).len();
        for cut in [first_two + 1, first_two + FRAME_HEADER, bytes.len() - 1] {
            let r = replay(&bytes[..cut]);
            assert_eq!((r.entries.len(), r.valid_len), (2, first_two), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 0x20;
        assert_eq!(replay(&flipped).valid_len, first_two, "a bit flip fails the checksum");
        let mut huge = frames(&entries[..2]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 64]);
        assert_eq!(replay(&huge).valid_len, first_two, "a garbage length is not waited for");
    }

    #[test]
    fn index_keeps_the_first_result_and_tracks_delivery() {
        let id = JobId::new("a").unwrap();
        let mut index = Index::from_entries([
            Entry::Recorded { result: result("a", "first") },
            Entry::Recorded { result: result("a", "second") },
            Entry::Recorded { result: result("b", "b") },
        ]);
        assert_eq!(index.get(&id).unwrap().result.message, "first");
        assert_eq!(index.pending().len(), 2);
        index.apply(Entry::Delivered { job_id: id.clone(), at_ms: 10 });
        assert_eq!(index.pending(), vec![result("b", "b")]);
        assert_eq!(index.pending_count(), 1);
        assert_eq!(index.forget_delivered_before(9), 0);
        assert_eq!(index.forget_delivered_before(10), 1);
        assert!(index.get(&id).is_none());
        let snapshot: Vec<Entry> = index.snapshot().collect();
        assert_eq!(snapshot, vec![Entry::Recorded { result: result("b", "b") }]);
    }

    #[test]
    fn oversized_payload_is_refused_and_leaves_the_buffer_unchanged() {
        let mut big = result("a", "");
        big.message = "x".repeat(MAX_PAYLOAD + 1);
        let mut out = vec![1, 2, 3];
        assert!(encode(&Entry::Recorded { result: big }, &mut out).is_err());
        assert_eq!(out, vec![1, 2, 3]);
    }
}
