//! Per-machine uids/gids from a configured range.
//!
//! Every isolated machine runs its VMM as a uid (and gid, the same number)
//! no other machine holds, so one compromised VMM cannot signal, ptrace or
//! open the files of another. The allocator is pure: the runtime calls
//! [`allocate`] under its global lock with the uids every record already
//! holds, so a crash can never leave an allocation no record explains (as
//! with addresses). The default range lies far above any distribution's
//! users and the usual `/etc/subuid` blocks (100000 + 65536·n).

pub use mvm_core::isolation::{UidError, UidRange};

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
}
