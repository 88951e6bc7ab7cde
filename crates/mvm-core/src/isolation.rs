//! How a VMM is confined: the inputs the runtime gives a backend
//! ([`Isolation`], part of [`crate::backend::VmSpec`]) and persists in the
//! machine's record, so that every resource can be released later from the
//! instance directory and the record alone.
//!
//! The mechanics (uid allocation, cgroups v1/v2, chroot preparation and
//! release) live in the `mvm-jail` crate; the backends apply them:
//!
//! - Firecracker runs under its `jailer` (chroot under the instance
//!   directory, the machine's uid/gid, a new PID and mount namespace, the
//!   machine's cgroup, Firecracker's default seccomp filters).
//! - QEMU is spawned directly as the machine's uid/gid, with every file and
//!   socket it needs opened by mvm beforehand and passed as a file
//!   descriptor, `-sandbox on,...` (seccomp) and the machine's cgroup.

use serde::{Deserialize, Serialize};

/// A cgroup hierarchy version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// One hierarchy per controller (`/sys/fs/cgroup/<controller>`).
    V1,
    /// The unified hierarchy.
    V2,
}

impl CgroupVersion {
    /// `1` or `2` (the jailer's `--cgroup-version`).
    pub fn number(self) -> u8 {
        match self {
            CgroupVersion::V1 => 1,
            CgroupVersion::V2 => 2,
        }
    }
}

/// Resource limits of one machine's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupLimits {
    /// Hard memory limit of everything in the cgroup (guest memory plus the
    /// VMM's own overhead), bytes.
    pub memory_bytes: u64,
    /// CPU bandwidth: at most this much CPU time ...
    pub cpu_quota_us: u64,
    /// ... per this period.
    pub cpu_period_us: u64,
    /// Relative CPU weight on the cgroup v2 scale (1..=10000, default 100);
    /// v1 `cpu.shares` is derived from it.
    pub cpu_weight: u32,
}

/// Where one machine's cgroup lives and what it limits.
///
/// The cgroup is `<hierarchy root>/<parent>/<name>` in every hierarchy mvm
/// uses (v1: `memory` and `cpu`; v2: the unified one) — the same layout the
/// Firecracker jailer uses for `--parent-cgroup` and `--id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupSpec {
    /// Which hierarchy.
    pub version: CgroupVersion,
    /// Relative parent path, `mvm/<home tag>` (no `.`/`..` components).
    pub parent: String,
    /// The machine's leaf cgroup (the machine name: `[a-z0-9-]`).
    pub name: String,
    /// The limits written when the cgroup is created.
    pub limits: CgroupLimits,
}

/// How one VMM is confined. `None` in a [`crate::backend::VmSpec`] means
/// the VMM runs with mvm's own privileges (non-root mvm, `--no-jailer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// The uid the VMM runs as: the machine's own, never 0.
    pub uid: u32,
    /// The gid the VMM runs as.
    pub gid: u32,
    /// The machine's cgroup, when the host offers memory and cpu
    /// controllers.
    pub cgroup: Option<CgroupSpec>,
}

/// Errors of uid ranges and allocation.
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

/// An inclusive range of uids (`first..=last`) for machines' VMMs, used for
/// gids too (config `jail_uid_range = "FIRST-LAST"`). The allocator is
/// `mvm_jail::uid::allocate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UidRange {
    /// First uid.
    pub first: u32,
    /// Last uid (inclusive).
    pub last: u32,
}

impl UidRange {
    /// The default: 65536 uids from 1000000000, far above any
    /// distribution's users and the usual `/etc/subuid` blocks.
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

impl std::str::FromStr for UidRange {
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

impl Serialize for UidRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UidRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A CPU cap for a machine's cgroup, in CPUs with up to three decimals
/// (`--cpu-quota 1.5`, config `cpu_quota = 0.5`): the machine's VMM may use
/// at most this much CPU time per period, whatever its vCPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuQuota {
    millis: u32,
}

/// The largest accepted quota, CPUs.
pub const MAX_CPU_QUOTA: u32 = 1024;

impl CpuQuota {
    /// A quota of `millis` thousandths of a CPU (1..=1024000).
    pub fn from_millis(millis: u32) -> Result<Self, String> {
        if millis == 0 {
            return Err("must be more than 0".into());
        }
        if millis > MAX_CPU_QUOTA * 1000 {
            return Err(format!("must be at most {MAX_CPU_QUOTA} CPUs"));
        }
        Ok(Self { millis })
    }

    /// Thousandths of a CPU.
    pub fn millis(self) -> u32 {
        self.millis
    }
}

impl std::fmt::Display for CpuQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (whole, frac) = (self.millis / 1000, self.millis % 1000);
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:03}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl std::str::FromStr for CpuQuota {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad = || format!("{s:?} is not a number of CPUs (e.g. 0.5, 2)");
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        if whole.is_empty() && frac.is_empty()
            || !whole.chars().all(|c| c.is_ascii_digit())
            || !frac.chars().all(|c| c.is_ascii_digit())
        {
            return Err(bad());
        }
        if frac.len() > 3 {
            return Err(format!("{s:?}: at most three decimals"));
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let frac: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
        let millis = whole
            .checked_mul(1000)
            .and_then(|w| w.checked_add(frac))
            .and_then(|m| u32::try_from(m).ok())
            .ok_or_else(|| format!("must be at most {MAX_CPU_QUOTA} CPUs"))?;
        Self::from_millis(millis)
    }
}

impl Serialize for CpuQuota {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CpuQuota {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A number (`1.5`, `2`) or a string (`"1.5"`).
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Int(i) => i.to_string(),
            Raw::Float(f) => format!("{f}"),
            Raw::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_ranges_parse_and_unsafe_ones_are_refused() {
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

    #[test]
    fn cpu_quotas_parse_print_and_deserialize() {
        for (text, millis, shown) in [
            ("1", 1000, "1"),
            ("0.5", 500, "0.5"),
            (".25", 250, "0.25"),
            ("2.125", 2125, "2.125"),
            ("1.50", 1500, "1.5"),
        ] {
            let q: CpuQuota = text.parse().unwrap();
            assert_eq!(q.millis(), millis, "{text}");
            assert_eq!(q.to_string(), shown);
        }
        for bad in [
            "", ".", "0", "0.000", "-1", "1.2345", "x", "1e3", "99999999",
        ] {
            assert!(bad.parse::<CpuQuota>().is_err(), "{bad}");
        }
        #[derive(Deserialize)]
        struct C {
            q: CpuQuota,
        }
        for (doc, millis) in [("q = 1.5", 1500), ("q = 2", 2000), ("q = \"0.25\"", 250)] {
            let c: C = toml::from_str(doc).unwrap();
            assert_eq!(c.q.millis(), millis, "{doc}");
        }
        assert!(toml::from_str::<C>("q = 0").is_err());
    }
}
