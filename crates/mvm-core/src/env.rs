//! Every `MVM_*` environment variable mvm reads, named once (uv's
//! `uv-static/src/env_vars.rs`). Settings variables are read only by
//! [`crate::config::Config::load`], where an invalid value is an error naming
//! the variable; the others are read where documented here.

/// State directory (read by `MvmHome::from_env`).
pub const MVM_HOME: &str = "MVM_HOME";
/// Log filter for mvm's own diagnostics (`tracing` env-filter syntax; read
/// by the CLI).
pub const MVM_LOG: &str = "MVM_LOG";

/// Setting: `auto`, `firecracker` or `qemu`.
pub const MVM_BACKEND: &str = "MVM_BACKEND";
/// Setting: the firecracker binary.
pub const MVM_FIRECRACKER_BIN: &str = "MVM_FIRECRACKER_BIN";
/// Setting: the Firecracker release `mvm setup` installs.
pub const MVM_FIRECRACKER_VERSION: &str = "MVM_FIRECRACKER_VERSION";
/// Setting: default vCPUs.
pub const MVM_CPUS: &str = "MVM_CPUS";
/// Setting: default memory, MiB.
pub const MVM_MEMORY: &str = "MVM_MEMORY";
/// Setting: a kernel of the user's own.
pub const MVM_KERNEL: &str = "MVM_KERNEL";
/// Setting: the machine subnet.
pub const MVM_SUBNET: &str = "MVM_SUBNET";
/// Setting: the bridge name.
pub const MVM_BRIDGE: &str = "MVM_BRIDGE";
/// Setting: default network mode (`nat` or `none`).
pub const MVM_NETWORK: &str = "MVM_NETWORK";
/// Setting: default egress policy of new machines.
pub const MVM_EGRESS: &str = "MVM_EGRESS";
/// Setting: seconds a guest may take from launch to the agent's answer.
pub const MVM_BOOT_TIMEOUT: &str = "MVM_BOOT_TIMEOUT";
/// Setting: the QEMU binary (read by the QEMU backend's discovery).
pub const MVM_QEMU_BIN: &str = "MVM_QEMU_BIN";
/// Setting: force the QEMU accelerator (`kvm` or `tcg`).
pub const MVM_QEMU_ACCEL: &str = "MVM_QEMU_ACCEL";
/// Setting: where `mvm setup` downloads Firecracker releases from.
pub const MVM_FIRECRACKER_RELEASE_URL: &str = "MVM_FIRECRACKER_RELEASE_URL";
/// Setting: confine VMMs when root (`1`/`0`; config `jailer`).
pub const MVM_JAILER: &str = "MVM_JAILER";
/// Setting: the Firecracker jailer binary (config `jailer_bin`; CI points
/// it at the test instrument in `../shared/firecracker/bin`).
pub const MVM_JAILER_BIN: &str = "MVM_JAILER_BIN";
/// Setting: the uids machines' VMMs run as, `FIRST-LAST`.
pub const MVM_JAIL_UID_RANGE: &str = "MVM_JAIL_UID_RANGE";
/// Setting: CPU cap of every machine's cgroup, in CPUs.
pub const MVM_CPU_QUOTA: &str = "MVM_CPU_QUOTA";

/// Diagnostics: `mvm exec` writes its step timings (JSON) to this file.
pub const MVM_TIMINGS_FILE: &str = "MVM_TIMINGS_FILE";
/// Tests: the file skipped tests are listed in (`scripts/test` sets it).
pub const MVM_SKIP_LOG: &str = "MVM_SKIP_LOG";
/// Tests: a fault to inject, `POINT=ACTION` (only in builds with the
/// `fault-injection` feature of `mvm-runtime`, which only tests enable).
pub const MVM_FAULT: &str = "MVM_FAULT";
/// Tests: a file the fault point appends its name to when reached.
pub const MVM_FAULT_REACHED: &str = "MVM_FAULT_REACHED";
/// Tests: the shared state directory of guest-booting tests.
pub const MVM_TEST_HOME: &str = "MVM_TEST_HOME";
/// Tests: a kernel (bzImage) for backend tests that boot one directly.
pub const MVM_TEST_KERNEL: &str = "MVM_TEST_KERNEL";
/// Tests: the initramfs for [`MVM_TEST_KERNEL`].
pub const MVM_TEST_INITRD: &str = "MVM_TEST_INITRD";
/// Tests: an ELF vmlinux for Firecracker tests.
pub const MVM_TEST_VMLINUX: &str = "MVM_TEST_VMLINUX";
/// Tests: set in the child processes of the concurrent-allocation test.
pub const MVM_ALLOC_TEST_CHILD: &str = "MVM_ALLOC_TEST_CHILD";
/// Tests: how many runs a measuring test takes.
pub const MVM_MEASURE_RUNS: &str = "MVM_MEASURE_RUNS";
/// Tests: where the fault-injection test writes its table.
pub const MVM_FAULT_TABLE: &str = "MVM_FAULT_TABLE";
/// Tests: only the fault-injection cases whose name contains this.
pub const MVM_FAULT_CASES: &str = "MVM_FAULT_CASES";
/// Tests: the Firecracker OpenAPI contract file (`.ci/run` sets it from
/// `../shared`; the contract tests say SKIPPED without it).
pub const MVM_FIRECRACKER_API_SPEC: &str = "MVM_FIRECRACKER_API_SPEC";
/// Benchmarks: the agent socket of a running machine to measure against.
pub const MVM_BENCH_AGENT_SOCKET: &str = "MVM_BENCH_AGENT_SOCKET";
/// Benchmarks: how many runs.
pub const MVM_BENCH_RUNS: &str = "MVM_BENCH_RUNS";
/// Guest agent tests: a directory standing in for the guest's `/etc` when
/// the agent runs on the host.
pub const MVM_AGENT_ETC: &str = "MVM_AGENT_ETC";
/// Build: a prebuilt guest agent to embed instead of compiling one.
pub const MVM_AGENT_PREBUILT: &str = "MVM_AGENT_PREBUILT";

/// Set by mvm on the processes it spawns for a machine (supervisor, VMM):
/// `<instance dir>#<record id>`, so `doctor`/`gc` can find processes of
/// machines that no longer exist without matching on names.
pub const MVM_MACHINE_TAG: &str = "MVM_MACHINE";
/// Set by mvm on a supervisor it spawns: the descriptor number of the
/// inherited owner lock.
pub const MVM_OWNER_FD: &str = "MVM_OWNER_FD";

/// Every variable above that users or tests may set (documentation and a
/// test that nothing else is read).
pub const ALL: &[&str] = &[
    MVM_HOME,
    MVM_LOG,
    MVM_BACKEND,
    MVM_FIRECRACKER_BIN,
    MVM_FIRECRACKER_VERSION,
    MVM_CPUS,
    MVM_MEMORY,
    MVM_KERNEL,
    MVM_SUBNET,
    MVM_BRIDGE,
    MVM_NETWORK,
    MVM_EGRESS,
    MVM_BOOT_TIMEOUT,
    MVM_QEMU_BIN,
    MVM_QEMU_ACCEL,
    MVM_JAILER_BIN,
    MVM_FIRECRACKER_RELEASE_URL,
    MVM_JAILER,
    MVM_JAIL_UID_RANGE,
    MVM_CPU_QUOTA,
    MVM_TIMINGS_FILE,
    MVM_SKIP_LOG,
    MVM_FAULT,
    MVM_FAULT_REACHED,
    MVM_TEST_HOME,
    MVM_TEST_KERNEL,
    MVM_TEST_INITRD,
    MVM_TEST_VMLINUX,
    MVM_ALLOC_TEST_CHILD,
    MVM_MEASURE_RUNS,
    MVM_FAULT_TABLE,
    MVM_FAULT_CASES,
    MVM_FIRECRACKER_API_SPEC,
    MVM_BENCH_AGENT_SOCKET,
    MVM_BENCH_RUNS,
    MVM_AGENT_ETC,
    MVM_AGENT_PREBUILT,
    MVM_MACHINE_TAG,
    MVM_OWNER_FD,
];
