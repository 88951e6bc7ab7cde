//! A machine's egress policy on the host (`--egress`), between the
//! supervisor and `mvm-net` (`mvm_net::egress` for the rules,
//! `mvm_net::dns` for resolution and the DNS filter).
//!
//! - **start** (the supervisor, after [`super::network::up`], before the
//!   VMM launches): [`up`] resolves the policy's host names on the host
//!   (on a blocking thread, with a deadline), binds the machine's DNS
//!   filter on the gateway address, applies the rules (nftables tables
//!   `mvm-eg-<TAP>`) and writes the state file. The returned [`Egress`]
//!   owns the DNS filter task, the task that re-resolves names when their
//!   TTL runs out, and the task that publishes the filter's refusals;
//!   dropping it stops all three.
//! - **change** (`mvm update NAME --egress ...`): the CLI records the new
//!   policy and signals the supervisor (SIGUSR1); the supervisor calls
//!   [`Egress::reload`], which resolves the new names, changes the rules
//!   in place (one transaction), switches the DNS filter, and writes the
//!   state with the next generation: that is the acknowledgement the CLI
//!   waits for (`crate::ops::update`).
//! - **stop**: the rules go with the TAP (`network::release` removes the
//!   tables), the tasks with the supervisor; [`release`] removes the state
//!   file. Recovery after a SIGKILL runs the same release.
//! - **rootless** (QEMU user-mode networking): no packet filter exists;
//!   `deny-all` becomes QEMU's `restrict=on` (exact), `allow-all` runs
//!   unfiltered (the state says so), allowlists are refused ([`check`]).
//!
//! When the host has a resolver, every TAP machine's DNS server is its
//! gateway ([`guest_dns`]), where the DNS filter answers what the policy
//! allows (everything under `allow-all`) by asking the host's resolvers:
//! so a host whose resolver is on loopback or link-local (blocked for
//! machines) still gives its machines DNS.
//!
//! # The state file
//!
//! `<instance>/egress.json` ([`EgressState`]), written atomically by the
//! supervisor: the policy it enforces, the resolved addresses, the DNS
//! filter's counters, how long applying took, and, after a failed change,
//! the error. `mvm inspect` shows it with the kernel's counters
//! ([`view`]).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mvm_core::InstanceDir;
use mvm_core::config::Config;
use mvm_core::egress::EgressPolicy;
use mvm_core::instance::{InstanceRecord, NetworkMode};
use mvm_net::NetConfig;
use mvm_net::dns::{self, DnsFilter, DnsFilterHandle};
use mvm_net::egress::{self as rules, MachineEgress, Nft};
use serde::{Deserialize, Serialize};

use super::network::{self, Attachment};

/// How long resolving a policy's host names may take in all.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long applying the rules may take.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Refusal counts are published at most this often.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// An egress operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The network settings are invalid.
    #[error("invalid network settings")]
    Config(#[from] mvm_net::config::ConfigError),
    /// The DNS filter could not start.
    #[error("cannot start the DNS filter of machine {name:?}")]
    Dns {
        /// The machine.
        name: String,
        /// Why.
        #[source]
        source: dns::DnsError,
    },
    /// The rules could not be applied.
    #[error("cannot apply egress policy `{policy}` to machine {name:?}")]
    Apply {
        /// The machine.
        name: String,
        /// The policy.
        policy: String,
        /// Why.
        #[source]
        source: Box<rules::EgressError>,
    },
    /// Applying did not finish in time.
    #[error("applying the egress policy of machine {name:?} did not finish within {after:?}")]
    Timeout {
        /// The machine.
        name: String,
        /// The deadline.
        after: Duration,
    },
    /// The blocking task that applied the rules failed.
    #[error("applying the egress policy of machine {name:?} failed")]
    Task {
        /// The machine.
        name: String,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
    /// User-mode networking cannot enforce an allowlist.
    #[error(
        "egress policy `{policy}` cannot be enforced without root: user-mode networking (used when mvm does not run as root) isolates a machine completely (--egress deny-all) or not at all (allow-all); run mvm as root for allowlists"
    )]
    UserMode {
        /// The policy.
        policy: String,
    },
    /// The state file could not be written.
    #[error("cannot record the egress state of machine {name:?}")]
    State {
        /// The machine.
        name: String,
        /// Why.
        #[source]
        source: mvm_core::atomic::AtomicWriteError,
    },
}

/// How a machine's policy is enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    /// Not at all (no network, or not running).
    #[default]
    None,
    /// nftables tables keyed on the machine's TAP, and the DNS filter.
    Nftables,
    /// QEMU user-mode networking: `restrict=on` or nothing.
    UserMode,
}

/// One resolved host name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedName {
    /// Its IPv4 addresses (allowed by the rules).
    pub addrs: Vec<Ipv4Addr>,
    /// The smallest TTL of the answer, seconds (resolved again after it,
    /// at least 30 s, at most an hour).
    pub ttl_secs: u64,
    /// Why it has no addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The DNS filter of a machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCounters {
    /// Its port on the gateway address (queries to gateway:53 go there).
    pub port: u16,
    /// Queries refused (names the policy does not allow).
    pub refused: u64,
    /// Queries forwarded to the host's resolvers.
    pub forwarded: u64,
}

/// `<instance>/egress.json`: what the supervisor enforces now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressState {
    /// Increases with every start and every change handled (the
    /// acknowledgement `mvm update` waits for).
    pub generation: u64,
    /// The policy enforced.
    pub policy: EgressPolicy,
    /// How.
    pub enforcement: Enforcement,
    /// Whether the policy is enforced exactly.
    pub enforced: bool,
    /// What is and is not enforced, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Host names of the policy and their addresses.
    #[serde(default)]
    pub resolved: BTreeMap<String, ResolvedName>,
    /// The DNS filter, when one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsCounters>,
    /// How long the last apply took (resolution, DNS filter, rules), ms.
    pub apply_ms: u64,
    /// Of which the rules (`nft`), ms.
    pub rules_ms: u64,
    /// Why the last change failed (the previous policy stays enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The policy of that failed change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_policy: Option<EgressPolicy>,
}

/// The machine's state file, if any (an unreadable one counts as none).
pub fn read_state(dir: &InstanceDir) -> Option<EgressState> {
    let bytes = fs_err::read(dir.egress_state()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_state(dir: &InstanceDir, st: &EgressState) -> Result<(), EgressError> {
    let bytes = serde_json::to_vec_pretty(st).expect("plain data serializes");
    mvm_core::atomic::write_atomic(&dir.egress_state(), &bytes, 0o644).map_err(|source| {
        EgressError::State {
            name: dir.name(),
            source,
        }
    })
}

fn write_state_logged(dir: &InstanceDir, st: &EgressState) {
    if let Err(e) = write_state(dir, st) {
        tracing::warn!("{}", crate::error_chain(&e));
    }
}

/// Remove the machine's state file (idempotent; the rules themselves go
/// with the TAP, see `network::release`).
pub fn release(dir: &InstanceDir) {
    if let Err(e) = mvm_core::files::remove_if_exists(&dir.egress_state()) {
        tracing::warn!("{e}");
    }
}

/// Whether `policy` can be enforced for a machine of `network` mode
/// started by this process (root: always; user-mode networking: only
/// `allow-all` and `deny-all`).
pub fn check(network_mode: NetworkMode, policy: &EgressPolicy) -> Result<(), EgressError> {
    if network_mode == NetworkMode::Nat && !network::use_tap() {
        let um = rules::user_mode(policy);
        if um.restrict && !um.enforced {
            return Err(EgressError::UserMode {
                policy: policy.to_string(),
            });
        }
    }
    Ok(())
}

/// What user-mode networking enforces of `policy`, for a machine of
/// `network_mode` that will get it (NAT without root); `None` otherwise.
pub fn user_mode_note(network_mode: NetworkMode, policy: &EgressPolicy) -> Option<String> {
    (network_mode == NetworkMode::Nat && !network::use_tap()).then(|| rules::user_mode(policy).note)
}

/// Whether a TAP machine started now gets a DNS filter (the host has a
/// resolver to forward to).
fn filter_runs() -> bool {
    !dns::host_upstreams().is_empty()
}

/// The DNS server for a TAP machine's kernel command line: the gateway,
/// where its DNS filter listens (see the module docs); the host's own
/// when there is no filter.
pub fn guest_dns(config: &Config) -> Vec<Ipv4Addr> {
    match NetConfig::from_core(&config.network) {
        Ok(cfg) if filter_runs() => vec![cfg.subnet.gateway()],
        _ => network::guest_dns(),
    }
}

/// The QEMU user-mode option for `rec`: `restrict=on` when the policy
/// wants the machine isolated.
pub fn user_mode_restrict(rec: &InstanceRecord) -> bool {
    rules::user_mode(&rec.egress).restrict
}

fn names_of(policy: &EgressPolicy) -> Vec<String> {
    policy.host_names().into_iter().map(str::to_owned).collect()
}

/// Resolve `names` through `upstreams` on a blocking thread, within
/// [`RESOLVE_TIMEOUT`] in all (names without an answer by then have none).
async fn resolve(
    names: Vec<String>,
    upstreams: Vec<SocketAddr>,
) -> BTreeMap<String, dns::Resolved> {
    if names.is_empty() {
        return BTreeMap::new();
    }
    let asked = names.clone();
    let task = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = asked.iter().map(String::as_str).collect();
        dns::resolve(&refs, &upstreams, dns::UPSTREAM_TIMEOUT)
    });
    match tokio::time::timeout(RESOLVE_TIMEOUT, task).await {
        Ok(Ok(r)) => r,
        outcome => {
            let why = match outcome {
                Err(_) => format!("no answer within {RESOLVE_TIMEOUT:?}"),
                Ok(Err(e)) => format!("resolution failed: {e}"),
                Ok(Ok(_)) => unreachable!(),
            };
            names
                .into_iter()
                .map(|n| {
                    (
                        n,
                        dns::Resolved {
                            addrs: Vec::new(),
                            ttl: Duration::ZERO,
                            error: Some(why.clone()),
                        },
                    )
                })
                .collect()
        }
    }
}

fn resolved_view(r: &BTreeMap<String, dns::Resolved>) -> BTreeMap<String, ResolvedName> {
    r.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                ResolvedName {
                    addrs: v.addrs.clone(),
                    ttl_secs: v.ttl.as_secs(),
                    error: v.error.clone(),
                },
            )
        })
        .collect()
}

fn hosts_of(r: &BTreeMap<String, ResolvedName>) -> rules::ResolvedHosts {
    r.iter()
        .map(|(k, v)| (k.clone(), v.addrs.clone()))
        .collect()
}

/// Closed (`true`) once the machine's [`Egress`] is dropped: rule changes
/// run on blocking threads, which an abort does not stop, so each runs
/// holding the gate and none starts after it closed (the teardown that
/// follows removes the tables; a late change must not re-create them).
type Gate = Arc<std::sync::Mutex<bool>>;

fn closed(gate: &Gate) -> std::sync::MutexGuard<'_, bool> {
    gate.lock().unwrap_or_else(|e| e.into_inner())
}

/// Apply `policy` to machine `m` on a blocking thread, within
/// [`APPLY_TIMEOUT`] (nothing once `gate` is closed).
async fn apply_rules(
    gate: Gate,
    m: MachineEgress,
    policy: EgressPolicy,
    hosts: rules::ResolvedHosts,
) -> Result<(), EgressError> {
    let name = m.machine.clone();
    let shown = policy.to_string();
    let task = tokio::task::spawn_blocking(move || {
        let closed = closed(&gate);
        if *closed {
            return Ok(false);
        }
        rules::apply(&Nft::default(), &m, &policy, &hosts)
    });
    match tokio::time::timeout(APPLY_TIMEOUT, task).await {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err(source))) => Err(EgressError::Apply {
            name,
            policy: shown,
            source: Box::new(source),
        }),
        Ok(Err(source)) => Err(EgressError::Task { name, source }),
        Err(_) => Err(EgressError::Timeout {
            name,
            after: APPLY_TIMEOUT,
        }),
    }
}

/// What the rules enforce, in words.
fn nft_note(policy: &EgressPolicy) -> String {
    const ALWAYS: &str = "link-local and cloud metadata (169.254.0.0/16), the host's own addresses and other machines stay blocked unless allowed by address";
    match (policy.default, policy.allow.is_empty()) {
        (mvm_core::egress::DefaultAction::Allow, _) => {
            format!("everything is allowed but: {ALWAYS}; DNS answers every name")
        }
        (mvm_core::egress::DefaultAction::Deny, true) => {
            "nothing is allowed; DNS answers no name".into()
        }
        (mvm_core::egress::DefaultAction::Deny, false) => format!(
            "only the listed destinations are allowed ({ALWAYS}); DNS answers only the listed host names"
        ),
    }
}

struct Inner {
    gate: Gate,
    dir: InstanceDir,
    machine: MachineEgress,
    upstreams: Vec<SocketAddr>,
    dns: Option<DnsFilterHandle>,
    /// Held while the rules change (reload, refresh), so changes never
    /// interleave.
    state: tokio::sync::Mutex<EgressState>,
    /// A reload happened: the refresh task computes its next wake-up again.
    reloaded: tokio::sync::Notify,
}

/// The egress enforcement of one running TAP machine: the DNS filter and
/// the tasks that keep the rules current (changes, re-resolution,
/// refusal counts). Dropping it stops them (the rules themselves go with
/// the TAP).
pub struct Egress {
    changes: tokio::sync::mpsc::UnboundedSender<EgressPolicy>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    gate: Gate,
}

impl Drop for Egress {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // Waits for a rule change in flight (bounded by nft's deadline).
        *closed(&self.gate) = true;
    }
}

/// Set up the enforcement of `rec`'s policy before its VMM launches (see
/// the module docs). `None` for a machine without a TAP (its state file
/// then says how, or that nothing is enforced).
pub async fn up(
    config: &Config,
    rec: &InstanceRecord,
    dir: &InstanceDir,
) -> Result<Option<Egress>, EgressError> {
    let generation = read_state(dir).map_or(0, |s| s.generation) + 1;
    let alloc = match Attachment::of(rec) {
        Attachment::None => {
            release(dir);
            return Ok(None);
        }
        Attachment::UserMode => {
            let um = rules::user_mode(&rec.egress);
            write_state(
                dir,
                &EgressState {
                    generation,
                    policy: rec.egress.clone(),
                    enforcement: Enforcement::UserMode,
                    enforced: um.enforced,
                    note: Some(um.note),
                    ..Default::default()
                },
            )?;
            return Ok(None);
        }
        Attachment::Tap(a) => a,
    };
    let t0 = Instant::now();
    let cfg = NetConfig::from_core(&config.network)?;
    let upstreams = dns::host_upstreams();
    let policy = rec.egress.clone();
    let resolved = resolved_view(&resolve(names_of(&policy), upstreams.clone()).await);
    let filter = if upstreams.is_empty() {
        tracing::warn!(
            "no DNS resolver on the host: machine {:?} gets no DNS",
            rec.name
        );
        None
    } else {
        Some(
            DnsFilter::bind(
                cfg.subnet.gateway(),
                alloc.ip,
                policy.clone(),
                upstreams.clone(),
            )
            .await
            .map_err(|source| EgressError::Dns {
                name: rec.name.clone(),
                source,
            })?,
        )
    };
    let machine = MachineEgress::new(
        &cfg,
        &rec.name,
        &alloc,
        filter.as_ref().map(DnsFilter::port),
    );
    let t_rules = Instant::now();
    let gate = Gate::default();
    apply_rules(
        gate.clone(),
        machine.clone(),
        policy.clone(),
        hosts_of(&resolved),
    )
    .await?;
    let rules_ms = t_rules.elapsed().as_millis() as u64;
    let apply_ms = t0.elapsed().as_millis() as u64;
    tracing::info!(
        "machine {:?}: egress policy `{policy}` applied in {apply_ms} ms (rules {rules_ms} ms)",
        rec.name
    );
    let state = EgressState {
        generation,
        policy: policy.clone(),
        enforcement: Enforcement::Nftables,
        enforced: true,
        note: Some(nft_note(&policy)),
        resolved,
        dns: filter.as_ref().map(|f| DnsCounters {
            port: f.port(),
            ..Default::default()
        }),
        apply_ms,
        rules_ms,
        error: None,
        failed_policy: None,
    };
    write_state(dir, &state)?;
    let inner = Arc::new(Inner {
        gate: gate.clone(),
        dir: dir.clone(),
        machine,
        upstreams,
        dns: filter.as_ref().map(DnsFilter::handle),
        state: tokio::sync::Mutex::new(state),
        reloaded: tokio::sync::Notify::new(),
    });
    let mut tasks = Vec::new();
    if let Some(f) = filter {
        tasks.push(tokio::spawn(f.run(std::future::pending::<()>())));
        tasks.push(tokio::spawn(publish_refusals(inner.clone())));
    }
    tasks.push(tokio::spawn(refresh(inner.clone())));
    let (changes, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tasks.push(tokio::spawn(async move {
        while let Some(policy) = rx.recv().await {
            change(&inner, policy).await;
        }
    }));
    Ok(Some(Egress {
        changes,
        tasks,
        gate,
    }))
}

impl Egress {
    /// Enforce `policy` from now on (`mvm update`), in the background (see
    /// [`change`]): the caller, the supervisor's loop, does not wait.
    pub fn reload(&self, policy: EgressPolicy) {
        let _ = self.changes.send(policy);
    }
}

/// Resolve `policy`'s names, change the rules in place (atomically),
/// switch the DNS filter, and record the outcome with the next generation.
/// A failure keeps the previous policy enforced and is recorded (`error`,
/// `failed_policy`).
async fn change(inner: &Inner, policy: EgressPolicy) {
    {
        let mut st = inner.state.lock().await;
        let t0 = Instant::now();
        let resolved = resolved_view(&resolve(names_of(&policy), inner.upstreams.clone()).await);
        let t_rules = Instant::now();
        let applied = apply_rules(
            inner.gate.clone(),
            inner.machine.clone(),
            policy.clone(),
            hosts_of(&resolved),
        )
        .await;
        st.generation += 1;
        match applied {
            Ok(()) => {
                if let Some(d) = &inner.dns {
                    d.set_policy(policy.clone());
                }
                st.rules_ms = t_rules.elapsed().as_millis() as u64;
                st.apply_ms = t0.elapsed().as_millis() as u64;
                tracing::info!(
                    "machine {:?}: egress policy changed to `{policy}` in {} ms",
                    inner.machine.machine,
                    st.apply_ms
                );
                st.note = Some(nft_note(&policy));
                st.policy = policy;
                st.resolved = resolved;
                st.error = None;
                st.failed_policy = None;
            }
            Err(e) => {
                let msg = crate::error_chain(&e);
                tracing::warn!("{msg}");
                st.error = Some(msg);
                st.failed_policy = Some(policy);
            }
        }
        write_state_logged(&inner.dir, &st);
    }
    inner.reloaded.notify_one();
}

/// Resolve the policy's names again when their TTL runs out (failed names
/// after 30 s) and replace their addresses in place.
async fn refresh(inner: Arc<Inner>) {
    loop {
        let wait = {
            let st = inner.state.lock().await;
            st.resolved
                .values()
                .map(|r| {
                    if r.addrs.is_empty() {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(r.ttl_secs)
                    }
                })
                .min()
                .map(rules::refresh_after)
        };
        tokio::select! {
            () = async {
                match wait {
                    Some(w) => tokio::time::sleep(w).await,
                    None => std::future::pending().await,
                }
            } => {}
            () = inner.reloaded.notified() => continue,
        }
        let policy = inner.state.lock().await.policy.clone();
        let resolved = resolved_view(&resolve(names_of(&policy), inner.upstreams.clone()).await);
        let mut st = inner.state.lock().await;
        if st.policy != policy {
            continue; // changed meanwhile; the reload resolved it
        }
        let (tap, p, hosts) = (
            inner.machine.tap.clone(),
            policy.clone(),
            hosts_of(&resolved),
        );
        let gate = inner.gate.clone();
        let done = tokio::task::spawn_blocking(move || {
            let closed = closed(&gate);
            if *closed {
                return Ok(());
            }
            rules::update_hosts(&Nft::default(), &tap, &p, &hosts)
        })
        .await;
        match done {
            Ok(Ok(())) => {
                st.resolved = resolved;
                write_state_logged(&inner.dir, &st);
            }
            Ok(Err(e)) => tracing::warn!(
                "re-resolving the host names of machine {:?}: {}",
                inner.machine.machine,
                crate::error_chain(&e)
            ),
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// Write the DNS filter's counters to the state file after refusals (at
/// most every [`PUBLISH_EVERY`]).
async fn publish_refusals(inner: Arc<Inner>) {
    let Some(d) = inner.dns.clone() else { return };
    loop {
        d.refusal().await;
        {
            let mut st = inner.state.lock().await;
            if let Some(c) = st.dns.as_mut() {
                c.refused = d.refused();
                c.forwarded = d.forwarded();
            }
            write_state_logged(&inner.dir, &st);
        }
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
}

/// Refused attempts of one machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// Packets the rules refused (connection attempts, datagrams), from
    /// the kernel's counters.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// DNS queries the DNS filter refused.
    pub dns_queries: u64,
    /// Frames dropped because their source was not the machine's.
    pub spoofed: u64,
}

/// A machine's egress policy as `mvm inspect` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EgressView {
    /// The recorded policy (what the machine gets at its next start, and
    /// now, once applied).
    pub policy: EgressPolicy,
    /// The policy enforced now, when it differs from the recorded one (a
    /// change not applied yet, or that failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforced_policy: Option<EgressPolicy>,
    /// How it is enforced.
    pub enforcement: Enforcement,
    /// Whether exactly.
    pub enforced: bool,
    /// What is and is not enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Host names and their addresses.
    pub resolved: BTreeMap<String, ResolvedName>,
    /// Refused attempts.
    pub refused: Refused,
    /// The DNS filter's port on the gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_port: Option<u16>,
    /// How long applying the policy took, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apply_ms: Option<u64>,
    /// Why the last change failed, or why the counters are missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The egress view of `rec`; `running` says whether its supervisor lives
/// (only then are the state file and the kernel's counters current).
pub fn view(rec: &InstanceRecord, dir: &InstanceDir, running: bool) -> EgressView {
    let st = read_state(dir).filter(|_| running);
    let mut v = EgressView {
        policy: rec.egress.clone(),
        enforced_policy: None,
        enforcement: Enforcement::None,
        enforced: false,
        note: None,
        resolved: BTreeMap::new(),
        refused: Refused::default(),
        dns_port: None,
        apply_ms: None,
        error: None,
    };
    if rec.network == NetworkMode::None {
        v.note = Some("the machine has no network".into());
        return v;
    }
    let Some(st) = st else {
        v.note = Some("not running: the policy is applied when the machine starts".into());
        return v;
    };
    v.enforced_policy = (st.policy != rec.egress).then(|| st.policy.clone());
    v.enforcement = st.enforcement;
    v.enforced = st.enforced;
    v.note = st.note.clone();
    v.resolved = st.resolved.clone();
    v.refused.dns_queries = st.dns.map_or(0, |d| d.refused);
    v.dns_port = st.dns.map(|d| d.port);
    v.apply_ms = Some(st.apply_ms);
    v.error = st.error.clone();
    if let (Enforcement::Nftables, Some(alloc)) = (st.enforcement, rec.net.as_ref()) {
        match rules::status(&Nft::default(), &alloc.tap) {
            Ok(Some(k)) => {
                v.refused.packets = k.counters.refused_packets;
                v.refused.bytes = k.counters.refused_bytes;
                v.refused.spoofed = k.counters.spoofed_packets;
            }
            Ok(None) => v.error = Some(format!("no egress rules found for TAP {}", alloc.tap)),
            Err(e) => {
                v.error = Some(format!(
                    "cannot read the refusal counters: {}",
                    crate::error_chain(&e)
                ))
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_release_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(tmp.path().join("m"));
        fs_err::create_dir_all(dir.root()).unwrap();
        assert_eq!(read_state(&dir), None);
        let st = EgressState {
            generation: 3,
            policy: "allow=test-host.example:80".parse().unwrap(),
            enforcement: Enforcement::Nftables,
            enforced: true,
            resolved: BTreeMap::from([(
                "test-host.example".to_owned(),
                ResolvedName {
                    addrs: vec![Ipv4Addr::new(198, 51, 100, 2)],
                    ttl_secs: 300,
                    error: None,
                },
            )]),
            dns: Some(DnsCounters {
                port: 40000,
                refused: 2,
                forwarded: 5,
            }),
            ..Default::default()
        };
        write_state(&dir, &st).unwrap();
        assert_eq!(read_state(&dir), Some(st));
        release(&dir);
        release(&dir);
        assert_eq!(read_state(&dir), None);
    }

    #[test]
    fn notes_say_what_is_enforced() {
        assert!(nft_note(&EgressPolicy::allow_all()).contains("169.254.0.0/16"));
        assert!(nft_note(&EgressPolicy::deny_all()).contains("no name"));
        assert!(nft_note(&"allow=a.example".parse().unwrap()).contains("listed host names"));
    }
}
