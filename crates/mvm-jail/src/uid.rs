//! Per-machine uids/gids from a configured range.
//!
//! Every isolated machine runs its VMM as a uid (and gid, the same number)
//! no other machine holds, so one compromised VMM cannot signal, ptrace or
//! open the files of another. The allocator is pure: the runtime calls
//! [`allocate`] under its global lock with the uids every record already
//! holds, so a crash can never leave an allocation no record explains (as
//! with addresses). The default range lies far above any distribution's
//! users and the usual `/etc/subuid` blocks (100000 + 65536·n).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Errors of uid allocation and range parsing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UidError {
    /// Every uid of the range is taken.
    #[error("no free uid in {range} ({count} machines hold one)")]
    Exhausted {
        /// The range.
        range: UidRange,
        /// How many uids are taken.
        count: usize,
    },
    /// A range in configuration does not parse or is unusable.
    #[error(
        "invalid uid range {text:?}: {why} (expected FIRST-LAST, e.g. \"1000000000-1000065535\")"
    )]
    BadRange {
        /// What was given.
        text: String,
        /// Why it is refused.
        why: &'static str,
    },
}

/// An inclusive range of uids (`first..=last`), used for gids too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UidRange {
    /// First uid.
    pub first: u32,
    /// Last uid (inclusive).
    pub last: u32,
}

impl UidRange {
    /// The default: 65536 uids from 1000000000.
    pub const DEFAULT: UidRange = UidRange {
        first: 1_000_000_000,
        last: 1_000_065_535,
    };

    /// A checked range: not empty, never uid 0, never the overflow uid
    /// 65534 or `(uid_t)-1`.
    pub fn new(first: u32, last: u32) -> Result<Self, UidError> {
        let bad = |why| UidError::BadRange {
            text: format!("{first}-{last}"),
            why,
        };
        if first > last {
            return Err(bad("FIRST is above LAST"));
        }
        if first == 0 {
            return Err(bad("uid 0 is root"));
        }
        if (first..=last).contains(&65534) {
            return Err(bad("it contains 65534 (nobody, the overflow uid)"));
        }
        if last == u32::MAX {
            return Err(bad("uid 4294967295 is (uid_t)-1"));
        }
        Ok(Self { first, last })
    }

    /// Whether `uid` is in the range.
    pub fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }
}

impl Default for UidRange {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for UidRange {
    type Err = UidError;
    fn from_str(s: &str) -> Result<Self, UidError> {
        let bad = |why| UidError::BadRange {
            text: s.to_owned(),
            why,
        };
        let (a, b) = s.trim().split_once('-').ok_or_else(|| bad("no '-'"))?;
        let a = a.trim().parse().map_err(|_| bad("FIRST is not a number"))?;
        let b = b.trim().parse().map_err(|_| bad("LAST is not a number"))?;
        Self::new(a, b).map_err(|e| match e {
            UidError::BadRange { why, .. } => bad(why),
            other => other,
        })
    }
}

/// The lowest uid of `range` not in `taken` (uids outside the range in
/// `taken` are ignored).
pub fn allocate(range: UidRange, taken: impl IntoIterator<Item = u32>) -> Result<u32, UidError> {
    let mut taken: Vec<u32> = taken.into_iter().filter(|u| range.contains(*u)).collect();
    taken.sort_unstable();
    taken.dedup();
    let mut next = range.first;
    for t in &taken {
        if *t != next {
            break;
        }
        if next == range.last {
            return Err(UidError::Exhausted {
                range,
                count: taken.len(),
            });
        }
        next += 1;
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_uid_is_allocated() {
        let r = UidRange::new(10, 14).unwrap();
        assert_eq!(allocate(r, []), Ok(10));
        assert_eq!(allocate(r, [10, 11, 13]), Ok(12));
        assert_eq!(allocate(r, [11, 5, 99]), Ok(10));
        assert_eq!(allocate(r, [13, 12, 11, 10, 10]), Ok(14));
        assert!(matches!(
            allocate(r, [10, 11, 12, 13, 14]),
            Err(UidError::Exhausted { count: 5, .. })
        ));
        let one = UidRange::new(7, 7).unwrap();
        assert_eq!(allocate(one, []), Ok(7));
        assert!(allocate(one, [7]).is_err());
    }

    #[test]
    fn ranges_parse_and_unsafe_ones_are_refused() {
        assert_eq!("1000-1999".parse(), UidRange::new(1000, 1999));
        assert_eq!(
            UidRange::DEFAULT.to_string().parse::<UidRange>(),
            Ok(UidRange::DEFAULT)
        );
        for bad in [
            "",
            "5",
            "a-b",
            "0-10",
            "20-10",
            "60000-70000",
            "1-4294967295",
        ] {
            assert!(bad.parse::<UidRange>().is_err(), "{bad}");
        }
        let e = "0-10".parse::<UidRange>().unwrap_err().to_string();
        assert!(e.contains("root") && e.contains("\"0-10\""), "{e}");
    }
}
