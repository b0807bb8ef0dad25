//! Who a job's processes run as when the job manager is root: each running job holds one
//! slot of `local.uidRange`, and a slot is a pair of unprivileged UIDs (gid = uid, no
//! supplementary groups): `first + 2k` for the runtime, `first + 2k + 1` for the sidecar.
//! Pure data and arithmetic; the launcher (`launcher.rs`) switches to them, the executor
//! allocates slots and records them in `meta.json` so a restart knows which are taken.
use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

/// `local.uidRange`'s default: far above the UIDs distributions hand out to people and
/// services, and below the 2^31 some tools treat as negative.
pub const DEFAULT_UID_RANGE: &str = "200000-299999";

/// An inclusive range of UIDs for jobs, with an even count (whole slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

impl UidRange {
    /// Parse `"first-last"`. `own_uid` is the job manager's UID, which must stay outside.
    pub fn parse(s: &str, own_uid: u32) -> Result<Self, String> {
        let (a, b) = s.trim().split_once('-').ok_or_else(|| format!("must be \"first-last\", got {s:?}"))?;
        let num =
            |v: &str| v.trim().parse::<u32>().map_err(|_| format!("{:?} is not a UID (0..=4294967294)", v.trim()));
        let (first, last) = (num(a)?, num(b)?);
        if first == 0 {
            return Err("must not start at 0 (root)".into());
        }
        if last < first {
            return Err(format!("{first} is above {last}"));
        }
        // 4294967295 is (uid_t)-1, "no change" to setuid/chown.
        if last == u32::MAX {
            return Err("must end below 4294967295 ((uid_t)-1)".into());
        }
        let count = u64::from(last) - u64::from(first) + 1;
        if count < 2 || count % 2 != 0 {
            return Err(format!("must hold an even number of UIDs (two per job), {first}-{last} holds {count}"));
        }
        if (first..=last).contains(&own_uid) {
            return Err(format!("contains the job manager's own UID {own_uid}"));
        }
        Ok(Self { first, last })
    }

    /// How many jobs can run at once.
    pub fn slots(&self) -> u32 {
        self.last.abs_diff(self.first).div_ceil(2)
    }

    pub fn ids(&self, slot: u32) -> JobIds {
        let runtime = self.first + 2 * slot;
        JobIds { slot, runtime, sidecar: runtime + 1 }
    }

    /// The lowest slot not in `taken`, if any is left.
    pub fn lowest_free(&self, taken: &BTreeSet<u32>) -> Option<u32> {
        (0..self.slots()).find(|s| !taken.contains(s))
    }
}

impl fmt::Display for UidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The UIDs (= GIDs) of one job's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobIds {
    pub slot: u32,
    pub runtime: u32,
    pub sidecar: u32,
}

/// Isolation as the executor applies it: the UID range and the launcher (this binary's
/// hidden `isolate` subcommand) that enters the namespaces and drops privileges.
#[derive(Clone, Debug)]
pub struct Isolation {
    pub uids: UidRange,
    pub launcher: PathBuf,
    /// Held as long as the executor lives (see [`claim_range`]).
    pub claim: std::sync::Arc<RangeClaim>,
}

/// Where job managers on one host register the UID ranges they use (`local.uidRange`).
pub const RANGE_REGISTRY: &str = "/run/job-manager";

/// This process's hold on its UID range: while it lives, no other job manager on the host
/// can start with a range that overlaps it (each would kill the other's jobs, since a job
/// that ends has every process of its UIDs killed).
#[derive(Debug)]
pub struct RangeClaim {
    _lock: std::fs::File,
    path: PathBuf,
}

impl Drop for RangeClaim {
    /// The lock goes with the file handle; the file is removed too, so the registry does
    /// not collect one per range ever used (a SIGKILLed holder leaves its file, which
    /// holds no lock and is ignored).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Claims `range` in `registry` (created 0700): refuses, naming the holder's range, when a
/// running job manager holds an overlapping one. Lock files of job managers that have
/// exited hold no lock and are ignored (and replaced when the range is the same).
pub fn claim_range(range: UidRange, registry: &std::path::Path) -> Result<RangeClaim, String> {
    use std::os::unix::fs::DirBuilderExt;
    let at = |what: &str, e: std::io::Error| format!("{what} {}: {e}", registry.display());
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(registry).map_err(|e| at("cannot create", e))?;
    // One claim at a time on the host: the scan and the new lock belong together.
    let guard = std::fs::File::create(registry.join("registry.lock")).map_err(|e| at("cannot open the lock in", e))?;
    guard.lock().map_err(|e| at("cannot lock", e))?;
    for entry in std::fs::read_dir(registry).map_err(|e| at("cannot read", e))?.flatten() {
        let name = entry.file_name();
        let Some(other) = name.to_str().and_then(parse_lock_name) else { continue };
        if other.first > range.last || other.last < range.first {
            continue;
        }
        let Ok(file) = std::fs::File::open(entry.path()) else { continue };
        if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock() {
            return Err(format!(
                "UIDs {}-{} overlap {}-{}, held by another job manager on this host (lock {}); give each job \
                 manager a range of its own",
                range.first,
                range.last,
                other.first,
                other.last,
                entry.path().display()
            ));
        }
    }
    let path = registry.join(lock_name(range));
    let lock = std::fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    lock.try_lock().map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
    Ok(RangeClaim { _lock: lock, path })
}

fn lock_name(range: UidRange) -> String {
    format!("uids-{}-{}.lock", range.first, range.last)
}

fn parse_lock_name(name: &str) -> Option<UidRange> {
    let (first, last) = name.strip_prefix("uids-")?.strip_suffix(".lock")?.split_once('-')?;
    Some(UidRange { first: first.parse().ok()?, last: last.parse().ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_ranges_cannot_be_held_twice_on_one_host() {
        let registry = tempfile::tempdir().unwrap();
        let range = |s: &str| UidRange::parse(s, 0).unwrap();
        let held = claim_range(range("500000-500099"), registry.path()).unwrap();
        let err = claim_range(range("500050-500149"), registry.path()).unwrap_err();
        assert!(err.contains("overlap 500000-500099, held by another job manager"), "{err}");
        assert!(claim_range(range("500000-500099"), registry.path()).is_err(), "the same range twice");
        let beside = claim_range(range("500100-500199"), registry.path()).expect("a range beside it");
        drop(held);
        // Its holder gone, the range is free again (the stale lock file is reused).
        let again = claim_range(range("500000-500099"), registry.path()).unwrap();
        drop((again, beside));
    }

    #[test]
    fn a_range_parses_into_slots_of_two_uids() {
        let r = UidRange::parse(" 200000 - 299999 ", 0).unwrap();
        assert_eq!(r, UidRange { first: 200000, last: 299999 });
        assert_eq!(r.slots(), 50000);
        assert_eq!(r.ids(0), JobIds { slot: 0, runtime: 200000, sidecar: 200001 });
        assert_eq!(r.ids(3), JobIds { slot: 3, runtime: 200006, sidecar: 200007 });
        assert_eq!(r.ids(r.slots() - 1).sidecar, 299999);
        assert_eq!(UidRange::parse(DEFAULT_UID_RANGE, 0).unwrap().to_string(), DEFAULT_UID_RANGE);
    }

    #[test]
    fn bad_ranges_are_refused_with_the_reason() {
        struct Case {
            value: &'static str,
            own_uid: u32,
            reason: &'static str,
        }
        let cases = [
            Case { value: "200000", own_uid: 0, reason: "must be \"first-last\", got \"200000\"" },
            Case { value: "a-b", own_uid: 0, reason: "\"a\" is not a UID (0..=4294967294)" },
            Case { value: "0-9", own_uid: 1000, reason: "must not start at 0 (root)" },
            Case { value: "10-1", own_uid: 0, reason: "10 is above 1" },
            Case {
                value: "100-100",
                own_uid: 0,
                reason: "must hold an even number of UIDs (two per job), 100-100 holds 1",
            },
            Case {
                value: "100-102",
                own_uid: 0,
                reason: "must hold an even number of UIDs (two per job), 100-102 holds 3",
            },
            Case { value: "1000-1999", own_uid: 1500, reason: "contains the job manager's own UID 1500" },
            Case { value: "4294967294-4294967295", own_uid: 0, reason: "must end below 4294967295 ((uid_t)-1)" },
        ];
        for c in cases {
            assert_eq!(UidRange::parse(c.value, c.own_uid), Err(c.reason.to_string()), "{}", c.value);
        }
    }

    #[test]
    fn the_lowest_free_slot_is_allocated_and_none_when_all_are_taken() {
        let r = UidRange::parse("1000-1005", 0).unwrap();
        assert_eq!(r.slots(), 3);
        assert_eq!(r.lowest_free(&BTreeSet::new()), Some(0));
        assert_eq!(r.lowest_free(&BTreeSet::from([0, 2])), Some(1));
        assert_eq!(r.lowest_free(&BTreeSet::from([1])), Some(0));
        assert_eq!(r.lowest_free(&BTreeSet::from([0, 1, 2])), None);
        // A slot recorded by a job from a wider range (before a config change) is ignored.
        assert_eq!(r.lowest_free(&BTreeSet::from([0, 1, 7])), Some(2));
    }
}
