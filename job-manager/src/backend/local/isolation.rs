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
}

#[cfg(test)]
mod tests {
    use super::*;

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
