//! The result journal's on-disk format and its in-memory index, both pure: no I/O here,
//! so framing, recovery and the first-writer-wins decisions are unit-tested directly.
//!
//! A journal is a sequence of frames `[len: u32 LE][crc32: u32 LE][payload: len bytes]`
//! whose payload is one JSON [`Entry`]. JSON keeps the file readable with ordinary tools;
//! the checksum (not JSON parsing) is what tells a torn or corrupt frame from a good one.
use common::{JobId, JobResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

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

/// What a journal's bytes hold: the entries of every intact frame, in order, where those
/// frames are, and what lies between them that is no frame.
///
/// A frame is intact when its length fits, its checksum matches and its payload decodes;
/// after a bad frame, recovery resynchronises on the next offset where an intact frame
/// starts, so one flipped byte costs one frame, not every frame after it. Bad bytes
/// followed by an intact frame are `corrupt` (damage to fsynced data: quarantined and
/// reported). Bad bytes after the last intact frame are the `torn_tail`: a batch whose
/// write was cut short, never fsynced, so none of its results was ever acknowledged.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Replay {
    pub entries: Vec<Entry>,
    /// Byte ranges of the intact frames, in order (one per entry).
    pub frames: Vec<Range<usize>>,
    /// Bad byte ranges between intact frames.
    pub corrupt: Vec<Range<usize>>,
    /// Bad bytes after the last intact frame, to the end.
    pub torn_tail: Option<Range<usize>>,
}

impl Replay {
    /// Whether the bytes were one run of intact frames, possibly cut short at the end:
    /// then the journal is the prefix `..intact_prefix()` and nothing needs rewriting.
    pub fn intact_prefix(&self) -> Option<usize> {
        self.corrupt.is_empty().then(|| self.frames.last().map_or(0, |f| f.end))
    }
}

/// Decode every intact frame, skipping (and reporting) the bytes that are none.
pub(super) fn replay(bytes: &[u8]) -> Replay {
    let mut out = Replay::default();
    let mut pos = 0;
    let mut bad_since = None;
    while pos < bytes.len() {
        match frame_at(bytes, pos) {
            Some((entry, end)) => {
                if let Some(start) = bad_since.take() {
                    out.corrupt.push(start..pos);
                }
                out.entries.push(entry);
                out.frames.push(pos..end);
                pos = end;
            }
            None => {
                bad_since.get_or_insert(pos);
                pos += 1;
            }
        }
    }
    out.torn_tail = bad_since.map(|start| start..bytes.len());
    out
}

/// The intact frame starting at `pos`, with where it ends. Cheap checks first, since a
/// resynchronising scan asks this at every offset of a bad region: a length that does not
/// fit is refused before any checksum, and a payload must open a JSON object (which also
/// refuses the all-zero header of a zero-filled region, whose empty payload has CRC 0).
fn frame_at(bytes: &[u8], pos: usize) -> Option<(Entry, usize)> {
    let header = bytes.get(pos..pos + FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > MAX_PAYLOAD {
        return None;
    }
    let end = pos + FRAME_HEADER + len;
    let payload = bytes.get(pos + FRAME_HEADER..end)?;
    if payload.first() != Some(&b'{') || crc32(payload) != crc {
        return None;
    }
    let entry = serde_json::from_slice(payload).ok()?;
    Some((entry, end))
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

    fn entries(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| match i % 3 {
                1 => Entry::Delivered { job_id: JobId::new(format!("j{}", i - 1)).unwrap(), at_ms: i as u64 },
                _ => Entry::Recorded { result: result(&format!("j{i}"), &format!("message {i}")) },
            })
            .collect()
    }

    /// Where each entry's frame lies in `frames(entries)`.
    fn ranges(entries: &[Entry]) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for e in entries {
            let start = buf.len();
            encode(e, &mut buf).unwrap();
            out.push(start..buf.len());
        }
        out
    }

    #[test]
    fn replay_round_trips_and_cuts_a_torn_or_corrupt_last_frame_as_a_torn_tail() {
        let entries = entries(3);
        let bytes = frames(&entries);
        let whole = replay(&bytes);
        assert_eq!((&whole.entries, whole.torn_tail.clone()), (&entries, None));
        assert_eq!(whole.intact_prefix(), Some(bytes.len()));
        let first_two = frames(&entries[..2]).len();
        for cut in [first_two + 1, first_two + FRAME_HEADER, bytes.len() - 1] {
            let r = replay(&bytes[..cut]);
            assert_eq!(r.entries, entries[..2], "cut at {cut}");
            assert_eq!((r.intact_prefix(), r.torn_tail), (Some(first_two), Some(first_two..cut)), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 0x20;
        let r = replay(&flipped);
        assert_eq!(r.intact_prefix(), Some(first_two), "a bit flip fails the checksum");
        assert_eq!(r.torn_tail, Some(first_two..bytes.len()));
        let mut huge = frames(&entries[..2]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 64]);
        assert_eq!(replay(&huge).intact_prefix(), Some(first_two), "a garbage length is not waited for");
    }

    /// The incident: one flipped byte in frame 3 of 30 discarded the 27 frames after it.
    #[test]
    fn a_flipped_byte_in_a_middle_frame_costs_only_that_frame() {
        let entries = entries(30);
        let at = ranges(&entries);
        let mut bytes = frames(&entries);
        for (what, offset) in [("payload", at[2].start + FRAME_HEADER + 5), ("length", at[2].start + 1)] {
            let mut damaged = bytes.clone();
            damaged[offset] ^= 0x01;
            let r = replay(&damaged);
            let mut expected = entries.clone();
            expected.remove(2);
            assert_eq!(r.entries, expected, "a flip in frame 3's {what}");
            assert_eq!((r.corrupt, r.torn_tail), (vec![at[2].clone()], None), "a flip in frame 3's {what}");
        }
        bytes[at[29].start + FRAME_HEADER] ^= 0x01;
        let r = replay(&bytes);
        assert_eq!(
            (r.entries.len(), r.corrupt.len(), r.torn_tail),
            (29, 0, Some(at[29].clone())),
            "only a bad last frame is a torn tail"
        );
    }

    #[test]
    fn garbage_in_the_middle_is_skipped_and_the_frames_around_it_recovered() {
        let entries = entries(10);
        let at = ranges(&entries);
        let bytes = frames(&entries);
        for garbage in
            [vec![0u8; 4096], b"{\"op\":\"recorded\"}garbage".to_vec(), vec![0xFF; 3], 7u32.to_le_bytes().to_vec()]
        {
            let mut damaged = bytes[..at[5].start].to_vec();
            damaged.extend_from_slice(&garbage);
            damaged.extend_from_slice(&bytes[at[5].start..]);
            let r = replay(&damaged);
            assert_eq!(r.entries, entries, "garbage {garbage:?}");
            assert_eq!(r.corrupt, vec![at[5].start..at[5].start + garbage.len()]);
            assert_eq!(r.torn_tail, None);
        }
    }

    /// Random damage of every kind: replay never panics, never invents an entry, and
    /// recovers every frame whose bytes the damage did not touch (so never fewer than
    /// the intact frames before the first damage).
    #[test]
    fn replay_recovers_every_untouched_frame_under_random_damage() {
        use rand::{RngExt, SeedableRng};
        let entries = entries(30);
        let at = ranges(&entries);
        let bytes = frames(&entries);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for round in 0..3000 {
            let mut damaged = bytes.clone();
            let a = rng.random_range(0..bytes.len());
            let b = (a + rng.random_range(1..200)).min(bytes.len());
            // Which original byte range the damage touches, and the damaged bytes.
            let (touched, kind) = match rng.random_range(0..5) {
                0 => {
                    damaged[a] ^= 1 << rng.random_range(0..8);
                    (a..a + 1, "flip")
                }
                1 => {
                    rng.fill(&mut damaged[a..b]);
                    (a..b, "overwrite")
                }
                2 => {
                    let mut garbage = vec![0u8; b - a];
                    if rng.random_bool(0.5) {
                        rng.fill(&mut garbage[..]);
                    }
                    damaged.splice(a..a, garbage);
                    // Frames that start at `a` stay whole; the one `a` falls inside does not.
                    (a..a + 1, "insert")
                }
                3 => {
                    damaged.drain(a..b);
                    (a..b, "delete")
                }
                _ => {
                    damaged.truncate(a);
                    (a..bytes.len(), "truncate")
                }
            };
            let r = replay(&damaged);
            let untouched: Vec<&Entry> = entries
                .iter()
                .zip(&at)
                .filter(|(_, f)| f.end <= touched.start || f.start >= touched.end || (kind == "insert" && f.start == a))
                .map(|(e, _)| e)
                .collect();
            let mut recovered = r.entries.iter().peekable();
            for e in &untouched {
                // In order: skip what the damage left of other frames (never invented).
                while recovered.peek().is_some_and(|r| r != e) {
                    let extra = recovered.next().unwrap();
                    assert!(entries.contains(extra), "round {round} ({kind}): invented {extra:?}");
                }
                assert!(recovered.next().is_some(), "round {round} ({kind} at {touched:?}): lost {e:?}");
            }
            let before_damage = at.iter().take_while(|f| f.end <= touched.start).count();
            assert!(r.entries.len() >= before_damage, "round {round}");
        }
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
