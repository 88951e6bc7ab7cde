//! Machine names: `[a-z0-9][a-z0-9-]{0,62}` (CLI.md), and generated ones.

use rand::seq::IndexedRandom;

/// A name broke the rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid machine name {name:?}: names are 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit"
)]
pub struct InvalidName {
    /// The rejected name.
    pub name: String,
}

/// Check a user-supplied machine name.
pub fn validate(name: &str) -> Result<(), InvalidName> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0] != b'-';
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            name: name.to_owned(),
        })
    }
}

const ADJECTIVES: &[&str] = &[
    "brave", "calm", "eager", "fair", "gentle", "happy", "jolly", "keen", "lucid", "merry",
    "nimble", "proud", "quick", "quiet", "sharp", "swift", "tidy", "vivid", "witty", "zesty",
];
const NOUNS: &[&str] = &[
    "otter", "falcon", "badger", "heron", "lynx", "marten", "osprey", "panda", "quail", "raven",
    "salmon", "tapir", "walrus", "yak", "zebra", "bison", "crane", "dingo", "egret", "gecko",
];

/// A random, valid name such as `swift-otter-3f9a`.
pub fn generate() -> String {
    let mut rng = rand::rng();
    let a = ADJECTIVES.choose(&mut rng).expect("non-empty");
    let n = NOUNS.choose(&mut rng).expect("non-empty");
    let suffix: u16 = rand::Rng::random(&mut rng);
    format!("{a}-{n}-{suffix:04x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_rejects() {
        for ok in ["a", "a-b", "0", "web-1", &"x".repeat(63)] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", "a b", &"x".repeat(64), "é"] {
            assert_eq!(
                validate(bad),
                Err(InvalidName {
                    name: bad.to_owned()
                })
            );
        }
    }

    #[test]
    fn generated_names_are_valid() {
        for _ in 0..100 {
            validate(&generate()).unwrap();
        }
    }

    proptest! {
        #[test]
        fn valid_iff_matches_pattern(s in "[a-zA-Z0-9_. -]{0,70}") {
            let expected = !s.is_empty() && s.len() <= 63
                && s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            prop_assert_eq!(validate(&s).is_ok(), expected);
        }
    }
}
