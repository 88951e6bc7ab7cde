//! NAT and forward rules through `iptables` (argv, never a shell).
//!
//! Every rule mvm adds carries a comment `mvm:<tag>` (`-m comment --comment`),
//! so mvm finds and removes exactly its own rules and nothing else:
//!
//! ```text
//! -t nat    -A POSTROUTING -s 172.16.0.0/24 ! -o mvmbr0 -m comment --comment mvm:host:mvmbr0 -j MASQUERADE
//! -t filter -A FORWARD -i mvmbr0 -m comment --comment mvm:host:mvmbr0 -j ACCEPT
//! -t filter -A FORWARD -o mvmbr0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment mvm:host:mvmbr0 -j ACCEPT
//! ```
//!
//! The FORWARD rules matter when the FORWARD policy is DROP (as Docker sets
//! it). [`ensure`] checks with `-C` before `-A`, so it is idempotent;
//! [`list_owned`] reads `iptables-save` and [`remove_owned`] deletes by the
//! exact saved rule text (`-D` + the same arguments).
//!
//! All calls pass `-w` to wait for the xtables lock and have a deadline.

use std::process::{Command, Stdio};
use std::time::Duration;

/// Comment prefix of every mvm rule.
pub const COMMENT_PREFIX: &str = "mvm:";

/// How long one iptables call may take.
pub const IPTABLES_TIMEOUT: Duration = Duration::from_secs(20);

/// NAT rule errors.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// The binary is missing.
    #[error(
        "{program} not found: install the `{package}` package (e.g. `apt-get install {package}`)"
    )]
    Missing {
        /// The program name.
        program: String,
        /// The Debian package that ships it.
        package: &'static str,
    },
    /// Starting or waiting for the program failed.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The program failed.
    #[error("`{argv}` failed ({status}): {stderr}")]
    Failed {
        /// The command line, for the message.
        argv: String,
        /// Exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// The program did not finish in time.
    #[error("`{argv}` did not finish within {timeout:?}")]
    Timeout {
        /// The command line.
        argv: String,
        /// The deadline.
        timeout: Duration,
    },
}

/// One rule: table, chain and its match/target arguments (without `-A CHAIN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `nat` or `filter`.
    pub table: String,
    /// Chain, e.g. `POSTROUTING`.
    pub chain: String,
    /// Arguments after the chain, including `-m comment --comment mvm:<tag>`.
    pub args: Vec<String>,
}

impl Rule {
    /// The tag (comment without `mvm:`), if the rule is mvm's.
    pub fn tag(&self) -> Option<&str> {
        self.args
            .windows(2)
            .find(|w| w[0] == "--comment")
            .and_then(|w| w[1].strip_prefix(COMMENT_PREFIX))
    }

    /// Human form, `-t nat -A POSTROUTING ...`.
    pub fn display(&self) -> String {
        format!(
            "-t {} -A {} {}",
            self.table,
            self.chain,
            self.args.join(" ")
        )
    }
}

fn tagged(table: &str, chain: &str, args: &[&str], tag: &str, target: &[&str]) -> Rule {
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend(["-m", "comment", "--comment"].map(String::from));
    a.push(format!("{COMMENT_PREFIX}{tag}"));
    a.push("-j".into());
    a.extend(target.iter().map(|s| s.to_string()));
    Rule {
        table: table.into(),
        chain: chain.into(),
        args: a,
    }
}

/// The tag of a bridge's host-level rules: `host:<bridge>`.
pub fn host_tag(bridge: &str) -> String {
    format!("host:{bridge}")
}

/// The rules that give machines on `bridge`/`subnet` outbound access.
pub fn host_rules(subnet: &str, bridge: &str) -> Vec<Rule> {
    let tag = host_tag(bridge);
    vec![
        tagged(
            "nat",
            "POSTROUTING",
            &["-s", subnet, "!", "-o", bridge],
            &tag,
            &["MASQUERADE"],
        ),
        tagged("filter", "FORWARD", &["-i", bridge], &tag, &["ACCEPT"]),
        tagged(
            "filter",
            "FORWARD",
            &[
                "-o",
                bridge,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
            ],
            &tag,
            &["ACCEPT"],
        ),
    ]
}

/// The `iptables` front end (program names can be changed, e.g. to
/// `iptables-legacy`).
#[derive(Debug, Clone)]
pub struct Iptables {
    /// `iptables`.
    pub iptables: String,
    /// `iptables-save`.
    pub save: String,
}

impl Default for Iptables {
    fn default() -> Self {
        Self {
            iptables: mvm_core::tools::IPTABLES.program.into(),
            save: mvm_core::tools::IPTABLES_SAVE.program.into(),
        }
    }
}

pub(crate) struct Output {
    pub(crate) ok: bool,
    pub(crate) code: Option<i32>,
    pub(crate) status: String,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

fn run(program: &str, args: &[String]) -> Result<Output, NatError> {
    run_with_input(program, "iptables", args, None)
}

/// Run `program args` through `mvm_core::tools` (argv, captured output, a
/// deadline), writing `input` (if any) to its standard input; `package`
/// names the package to install when the program is missing.
pub(crate) fn run_with_input(
    program: &str,
    package: &'static str,
    args: &[String],
    input: Option<Vec<u8>>,
) -> Result<Output, NatError> {
    let resolved = mvm_core::tools::which(program).ok_or_else(|| NatError::Missing {
        program: program.into(),
        package,
    })?;
    let mut cmd = Command::new(resolved);
    cmd.args(args).stdin(Stdio::null());
    let out = match input {
        Some(data) => mvm_core::tools::run_with_input(cmd, data, IPTABLES_TIMEOUT),
        None => mvm_core::tools::run_status(cmd, IPTABLES_TIMEOUT),
    };
    let o = out.map_err(|e| match e {
        mvm_core::tools::ToolError::Timeout { argv, timeout } => {
            NatError::Timeout { argv, timeout }
        }
        mvm_core::tools::ToolError::Missing { .. } => NatError::Missing {
            program: program.into(),
            package,
        },
        other => NatError::Spawn {
            program: program.into(),
            source: std::io::Error::other(other.to_string()),
        },
    })?;
    Ok(Output {
        ok: o.status.success(),
        code: o.status.code(),
        status: o.status.to_string(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    })
}

impl Iptables {
    fn argv(&self, op: &str, rule: &Rule) -> Vec<String> {
        let mut v: Vec<String> = ["-w", "-t", &rule.table, op, &rule.chain]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(rule.args.iter().cloned());
        v
    }

    fn call(&self, args: Vec<String>) -> Result<(), NatError> {
        let o = run(&self.iptables, &args)?;
        if o.ok {
            Ok(())
        } else {
            Err(NatError::Failed {
                argv: format!("{} {}", self.iptables, args.join(" ")),
                status: o.status,
                stderr: o.stderr.trim().to_owned(),
            })
        }
    }

    /// Whether `rule` is present (`iptables -C`).
    pub fn exists(&self, rule: &Rule) -> Result<bool, NatError> {
        let o = run(&self.iptables, &self.argv("-C", rule))?;
        // -C exits 1 when the rule is absent; 2+ is a real error.
        if o.ok {
            return Ok(true);
        }
        if o.code == Some(1) {
            return Ok(false);
        }
        Err(NatError::Failed {
            argv: format!("{} {}", self.iptables, self.argv("-C", rule).join(" ")),
            status: o.status,
            stderr: o.stderr.trim().to_owned(),
        })
    }

    /// Add `rule` unless it is already present. Returns whether it was added.
    pub fn ensure(&self, rule: &Rule) -> Result<bool, NatError> {
        if self.exists(rule)? {
            return Ok(false);
        }
        self.call(self.argv("-A", rule))?;
        Ok(true)
    }

    /// Delete one occurrence of `rule`.
    pub fn delete(&self, rule: &Rule) -> Result<(), NatError> {
        self.call(self.argv("-D", rule))
    }

    /// Every rule (any table) whose comment starts with `mvm:`.
    pub fn list_owned(&self) -> Result<Vec<Rule>, NatError> {
        let o = run(&self.save, &[])?;
        if !o.ok {
            return Err(NatError::Failed {
                argv: self.save.clone(),
                status: o.status,
                stderr: o.stderr.trim().to_owned(),
            });
        }
        Ok(parse_save(&o.stdout)
            .into_iter()
            .filter(|r| r.tag().is_some())
            .collect())
    }

    /// Delete every rule tagged `mvm:<tag>`; returns the rules removed.
    pub fn remove_owned(&self, tag: &str) -> Result<Vec<Rule>, NatError> {
        let mut removed = Vec::new();
        for r in self.list_owned()? {
            if r.tag() == Some(tag) {
                self.delete(&r)?;
                removed.push(r);
            }
        }
        Ok(removed)
    }
}

/// Split one `iptables-save` line into words, honouring double quotes
/// (comments with spaces are saved as `"a b"`).
fn split_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_q = false;
    let mut has = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_q = !in_q;
                has = true;
            }
            '\\' if in_q => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !in_q => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if has {
        out.push(cur);
    }
    out
}

/// Parse `iptables-save` output into rules (`*table` sections, `-A` lines).
pub fn parse_save(text: &str) -> Vec<Rule> {
    let mut table = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_owned();
        } else if line.starts_with("-A ") {
            let mut w = split_words(line);
            if w.len() < 2 {
                continue;
            }
            let args = w.split_off(2);
            out.push(Rule {
                table: table.clone(),
                chain: w[1].clone(),
                args,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -i mvmbr0 -m comment --comment mvm:host:mvmbr0 -j ACCEPT
-A FORWARD -i x -m comment --comment \"not mvm at all\" -j ACCEPT
COMMIT
*nat
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 172.16.0.0/24 ! -o mvmbr0 -m comment --comment mvm:host:mvmbr0 -j MASQUERADE
-A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE
COMMIT
";

    #[test]
    fn parses_save_output_and_finds_owned_rules() {
        let rules = parse_save(SAVE);
        assert_eq!(rules.len(), 5);
        let owned: Vec<_> = rules.iter().filter(|r| r.tag().is_some()).collect();
        assert_eq!(owned.len(), 2);
        assert_eq!(owned[0].table, "filter");
        assert_eq!(owned[1].table, "nat");
        assert_eq!(owned[1].chain, "POSTROUTING");
        assert_eq!(owned[1].tag(), Some("host:mvmbr0"));
        assert_eq!(rules[2].tag(), None);
        assert_eq!(rules[2].args[5], "not mvm at all");
    }

    #[test]
    fn host_rules_round_trip_through_the_saved_form() {
        // What we add is what iptables-save prints back for these rules.
        let rules = host_rules("172.16.0.0/24", "mvmbr0");
        let masq = &rules[0];
        assert_eq!(
            masq.display(),
            "-t nat -A POSTROUTING -s 172.16.0.0/24 ! -o mvmbr0 -m comment --comment mvm:host:mvmbr0 -j MASQUERADE"
        );
        let parsed = parse_save(SAVE);
        assert_eq!(&parsed[3], masq);
        assert_eq!(&parsed[1], &rules[1]);
    }

    #[test]
    fn missing_program_names_the_package() {
        let ipt = Iptables {
            iptables: "/nonexistent/iptables".into(),
            save: "/nonexistent/iptables-save".into(),
        };
        let e = ipt.list_owned().unwrap_err().to_string();
        assert!(e.contains("install the `iptables` package"), "{e}");
    }
}
