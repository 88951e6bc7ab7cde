//! The command-line surface (contract: `shared/CLI.md`). Only clap structs
//! live here; each subcommand's behaviour is in `commands/<name>.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::engine::{ArgValueCandidates, ArgValueCompleter};

use crate::complete;

/// Run Linux microVMs the way Docker runs containers.
#[derive(Debug, Parser)]
#[command(name = "mvm", version, about, propagate_version = true)]
pub struct Cli {
    /// Show each step (repeat for more detail). Goes before the subcommand
    /// (`mvm -v exec ...`), because `-v` after `run` is `--volume`, as in Docker.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only print errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Backend selection on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// Firecracker when present and KVM is usable, else QEMU.
    Auto,
    /// Firecracker.
    Firecracker,
    /// QEMU microvm.
    Qemu,
}

impl From<BackendArg> for mvm_core::backend::BackendChoice {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Auto => Self::Auto,
            BackendArg::Firecracker => Self::Firecracker,
            BackendArg::Qemu => Self::Qemu,
        }
    }
}

/// Network mode on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    /// Bridge + TAP + NAT.
    Nat,
    /// No network interface.
    None,
}

/// When to pull the image of `run`, `exec --image` and `shell --image`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullArg {
    /// Never: the image must have been pulled or imported.
    Never,
    /// When it is not in the store yet.
    Missing,
    /// Always ask the registry for the tag's current image.
    Always,
}

impl From<PullArg> for mvm_oci::PullPolicy {
    fn from(p: PullArg) -> Self {
        match p {
            PullArg::Never => Self::Never,
            PullArg::Missing => Self::Missing,
            PullArg::Always => Self::Always,
        }
    }
}

/// Pulling on first use (`run`, `exec --image`, `shell --image`).
#[derive(Debug, Clone, Args)]
pub struct PullArgs {
    /// When to pull the image from its registry.
    #[arg(long, value_enum, value_name = "WHEN", default_value = "missing")]
    pub pull: PullArg,
    /// Talk plain HTTP to the image's registry (e.g. `localhost:5000`).
    #[arg(long)]
    pub insecure: bool,
}

impl Default for PullArgs {
    fn default() -> Self {
        Self {
            pull: PullArg::Missing,
            insecure: false,
        }
    }
}

/// All subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Find or install what the backend needs, then build the default image.
    Setup(SetupArgs),
    /// Check prerequisites and say which backend `auto` picks.
    Doctor(DoctorArgs),
    /// Manage guest images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Create and start a machine (detached).
    Run(RunArgs),
    /// Start stopped machines.
    Start(NamesArgs),
    /// Stop machines: gracefully, then forcibly after the timeout.
    Stop(StopArgs),
    /// Remove machines.
    Rm(RmArgs),
    /// List machines.
    Ps(PsArgs),
    /// Show everything known about a machine.
    Inspect(InspectArgs),
    /// Show a machine's guest console (or VMM log).
    Logs(LogsArgs),
    /// Run a command in a running machine, or in a fresh transient one.
    Exec(ExecArgs),
    /// Pause a machine's vCPUs.
    Pause(NameArg),
    /// Resume a paused machine.
    Resume(NameArg),
    /// Change a machine's settings (its egress policy), live when it runs.
    Update(UpdateArgs),
    /// Remove leftovers no registered machine owns.
    Gc,
    /// Manage named volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Manage templates (an image plus a snapshot of a booted machine).
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Copy a file between the host and a running machine (one side is
    /// NAME:GUEST_PATH).
    Cp(CpArgs),
    /// A login shell in a machine (bash -l, else sh -l).
    Shell(ShellArgs),
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completion(CompletionArgs),
    /// Internal: the per-machine supervisor process.
    #[command(name = "__supervise", hide = true)]
    Supervise(NameArg),
}

/// `mvm volume ...`.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// List volumes.
    Ls {
        /// One JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Remove volumes (not while a machine lists them).
    Rm {
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `mvm template ...`.
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Boot a machine, run the warm-up command, snapshot it.
    Create(TemplateCreateArgs),
    /// List templates.
    Ls {
        /// One JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Show everything known about a template.
    Inspect {
        /// Template name.
        #[arg(add = ArgValueCandidates::new(complete::templates))]
        name: String,
        /// One JSON document (the default output is JSON too).
        #[arg(long)]
        json: bool,
    },
    /// Remove templates (not while running machines need them).
    Rm {
        /// Template names.
        #[arg(required = true, add = ArgValueCandidates::new(complete::templates))]
        names: Vec<String>,
        /// Remove even while machines restored from it run.
        #[arg(long, short = 'f')]
        force: bool,
    },
}

/// `mvm template create`.
#[derive(Debug, Args)]
pub struct TemplateCreateArgs {
    /// Template name.
    pub name: String,
    /// Image to boot.
    #[arg(long, conflicts_with = "from", add = ArgValueCandidates::new(complete::images))]
    pub image: Option<String>,
    /// Snapshot this running machine instead (it keeps running).
    #[arg(long, value_name = "MACHINE", add = ArgValueCandidates::new(complete::running_machines))]
    pub from: Option<String>,
    /// vCPUs.
    #[arg(long, conflicts_with = "from")]
    pub cpus: Option<u8>,
    /// Memory in MiB.
    #[arg(long, value_name = "MIB", conflicts_with = "from")]
    pub memory: Option<u32>,
    /// Backend.
    #[arg(long, value_enum, conflicts_with = "from")]
    pub backend: Option<BackendArg>,
    /// Network mode of the template (and so of its clones).
    #[arg(long, value_enum, conflicts_with = "from")]
    pub network: Option<NetworkArg>,
    /// Environment of the warm-up command.
    #[arg(
        short = 'e',
        long = "env",
        value_name = "KEY=VAL",
        conflicts_with = "from"
    )]
    pub env: Vec<String>,
    /// The warm-up command (after `--`), run before the snapshot.
    #[arg(last = true, conflicts_with = "from")]
    pub warmup: Vec<String>,
}

/// `mvm cp`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// Source: a host file or NAME:GUEST_PATH.
    #[arg(add = ArgValueCompleter::new(complete::CpOperand))]
    pub src: String,
    /// Destination: a host path or NAME:GUEST_PATH.
    #[arg(add = ArgValueCompleter::new(complete::CpOperand))]
    pub dst: String,
}

/// `mvm setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Which backend to prepare.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendArg,
    /// Use this firecracker binary instead of downloading one.
    #[arg(long, value_name = "PATH")]
    pub firecracker_bin: Option<PathBuf>,
    /// Firecracker release to install.
    #[arg(long, value_name = "X.Y.Z")]
    pub firecracker_version: Option<String>,
    /// Do not ask before installing packages.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `mvm doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// One JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `mvm image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images.
    Ls {
        /// One JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Build an image (the default one without a source).
    Build {
        /// Image name.
        #[arg(default_value = "default")]
        name: String,
        /// Use this directory as the root filesystem.
        #[arg(long, value_name = "DIR", conflicts_with = "from_tar")]
        from_dir: Option<PathBuf>,
        /// Use this tarball (.tar or .tar.gz) as the root filesystem.
        #[arg(long, value_name = "FILE")]
        from_tar: Option<PathBuf>,
        /// Root filesystem size in MiB.
        #[arg(long, value_name = "MIB")]
        size: Option<u32>,
    },
    /// Remove an image (a name or a reference); blobs no image needs go too.
    Rm {
        /// Image name or reference.
        #[arg(add = ArgValueCandidates::new(complete::images))]
        name: String,
    },
    /// Pull a container image from a registry (OCI distribution API).
    Pull {
        /// Image reference (`python:3.12`, `localhost:5000/app:1`,
        /// `ghcr.io/o/r@sha256:...`).
        reference: String,
        /// Talk plain HTTP to the registry (e.g. `localhost:5000`).
        #[arg(long)]
        insecure: bool,
        /// Registry user name (the password is read from stdin).
        #[arg(long, short = 'u', value_name = "USER", requires = "password_stdin")]
        username: Option<String>,
        /// Read the registry password from standard input.
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// Print the pull's figures (layers, bytes downloaded and found in
        /// the cache, times) as one JSON document instead of the reference.
        #[arg(long)]
        json: bool,
    },
    /// Import a `docker save` tarball or an OCI image layout (directory or
    /// tarball).
    Import {
        /// The tarball or layout directory.
        path: PathBuf,
        /// The name to give it (a reference; default: the name the archive
        /// gives, if any).
        #[arg(long, value_name = "NAME[:TAG]")]
        name: Option<String>,
    },
    /// Show what is known about an image, including an OCI image's config.
    Inspect {
        /// Image name or reference.
        name: String,
        /// One JSON document (the default output is JSON too; kept for scripts).
        #[arg(long)]
        json: bool,
    },
}

/// `mvm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Image to boot.
    #[arg(default_value = "default", add = ArgValueCandidates::new(complete::images))]
    pub image: String,
    /// Machine name (generated when omitted).
    #[arg(long)]
    pub name: Option<String>,
    /// vCPUs.
    #[arg(long)]
    pub cpus: Option<u8>,
    /// Memory in MiB.
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
    /// Publish a port: [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp].
    #[arg(short = 'p', long = "publish", value_name = "HOST:GUEST")]
    pub publish: Vec<String>,
    /// Attach a volume: HOST_DIR:GUEST_DIR[:ro|rw] or NAME:GUEST_DIR.
    #[arg(short = 'v', long = "volume", value_name = "SRC:GUEST_DIR")]
    pub volumes: Vec<String>,
    /// Environment for every command run in the machine.
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    pub env: Vec<String>,
    /// Secret file exposed read-only at /mnt/secrets/KEY.
    #[arg(long = "secret", value_name = "KEY=FILE")]
    pub secrets: Vec<String>,
    /// Network mode.
    #[arg(long, value_enum)]
    pub network: Option<NetworkArg>,
    /// What the machine may reach: allow-all, deny-all or
    /// allow=SPEC[,SPEC...] (SPEC: IP, CIDR or host name, optionally
    /// :PORT or :PORT/udp); repeat to add up. Default from the config.
    #[arg(long, value_name = "POLICY")]
    pub egress: Vec<String>,
    /// Backend.
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// Return once the VMM started, without waiting for the guest agent.
    #[arg(long)]
    pub no_wait: bool,
    /// Run the VMM unconfined even as root: no jailer, own uid, cgroup or
    /// seccomp sandbox (for debugging).
    #[arg(long)]
    pub no_jailer: bool,
    /// Cap the machine's CPU time at CPUS (e.g. 0.5, 2; default: its
    /// vCPUs); needs a confined VMM (root).
    #[arg(long, value_name = "CPUS")]
    pub cpu_quota: Option<mvm_core::isolation::CpuQuota>,
    /// Restore this template instead of booting (the image is the
    /// template's).
    #[arg(long, add = ArgValueCandidates::new(complete::templates))]
    pub template: Option<String>,
    /// With --template: fail (instead of a cold boot) when the snapshot
    /// cannot be restored.
    #[arg(long, requires = "template")]
    pub require_snapshot: bool,
    /// Default user of the main process and every exec (over the image's
    /// User): NAME, UID, NAME:GROUP or UID:GID.
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Default working directory (over the image's WorkingDir).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Pulling the image.
    #[command(flatten)]
    pub pull: PullArgs,
    /// The main process's command, replacing the image's Cmd (after `--`;
    /// the image's Entrypoint stays). The machine stops when it exits.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// One or more machine names.
#[derive(Debug, Args)]
pub struct NamesArgs {
    /// Machine names.
    #[arg(required = true, add = ArgValueCandidates::new(complete::machines))]
    pub names: Vec<String>,
}

/// One machine name.
#[derive(Debug, Args)]
pub struct NameArg {
    /// Machine name.
    #[arg(add = ArgValueCandidates::new(complete::machines))]
    pub name: String,
}

/// `mvm stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Machine names.
    #[arg(
        required_unless_present = "all",
        conflicts_with = "all",
        add = ArgValueCandidates::new(complete::running_machines)
    )]
    pub names: Vec<String>,
    /// Stop every running machine.
    #[arg(long)]
    pub all: bool,
    /// Seconds to wait for a graceful shutdown before killing the VMM.
    #[arg(long, short = 't', default_value_t = 10)]
    pub timeout: u64,
}

/// `mvm rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Machine names.
    #[arg(required = true, add = ArgValueCandidates::new(complete::machines))]
    pub names: Vec<String>,
    /// Stop a running machine first.
    #[arg(long, short = 'f')]
    pub force: bool,
}

/// `mvm ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Also show machines that are not running.
    #[arg(short, long)]
    pub all: bool,
    /// One JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `mvm inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Machine name.
    #[arg(add = ArgValueCandidates::new(complete::machines))]
    pub name: String,
    /// One JSON document (the default output is JSON too; kept for scripts).
    #[arg(long)]
    pub json: bool,
}

/// `mvm update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Machine name.
    pub name: String,
    /// The new egress policy (as `mvm run --egress`; repeat to add up).
    /// A running machine enforces it at once, atomically.
    #[arg(long, value_name = "POLICY", required = true)]
    pub egress: Vec<String>,
}

/// `mvm logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Machine name.
    #[arg(add = ArgValueCandidates::new(complete::machines))]
    pub name: String,
    /// Keep printing new output until the machine stops.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last LINES lines.
    #[arg(short = 'n', long = "tail", value_name = "LINES")]
    pub lines: Option<usize>,
    /// The VMM's own log instead of the guest console.
    #[arg(long)]
    pub hypervisor: bool,
}

/// `mvm exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Machine to run in (omit for a transient machine).
    #[arg(value_name = "NAME", add = ArgValueCandidates::new(complete::running_machines))]
    pub name: Option<String>,
    /// Image of the transient machine.
    #[arg(long, conflicts_with = "name", add = ArgValueCandidates::new(complete::images))]
    pub image: Option<String>,
    /// Restore the transient machine from this template instead of booting.
    #[arg(
        long,
        conflicts_with_all = ["name", "image", "launch_plan"],
        add = ArgValueCandidates::new(complete::templates)
    )]
    pub template: Option<String>,
    /// With --template: fail (exit 125) instead of a cold boot when the
    /// snapshot cannot be restored.
    #[arg(long, requires = "template")]
    pub require_snapshot: bool,
    /// vCPUs of the transient machine.
    #[arg(long, conflicts_with = "name")]
    pub cpus: Option<u8>,
    /// Memory (MiB) of the transient machine.
    #[arg(long, value_name = "MIB", conflicts_with = "name")]
    pub memory: Option<u32>,
    /// Share a host directory: HOST:GUEST[:ro|rw] (rw is synced back).
    #[arg(
        long = "add-dir",
        value_name = "HOST:GUEST[:MODE]",
        conflicts_with = "name"
    )]
    pub add_dirs: Vec<String>,
    /// Read the command from a launch plan (launch.json).
    #[arg(long, value_name = "FILE", conflicts_with = "name")]
    pub launch_plan: Option<PathBuf>,
    /// Backend of the transient machine.
    #[arg(long, value_enum, conflicts_with = "name")]
    pub backend: Option<BackendArg>,
    /// Run the transient machine's VMM unconfined even as root (for
    /// debugging).
    #[arg(long, conflicts_with = "name")]
    pub no_jailer: bool,
    /// Cap the transient machine's CPU time at CPUS (e.g. 0.5, 2).
    #[arg(long, value_name = "CPUS", conflicts_with = "name")]
    pub cpu_quota: Option<mvm_core::isolation::CpuQuota>,
    /// What the transient machine may reach (as `mvm run --egress`).
    #[arg(long, value_name = "POLICY", conflicts_with = "name")]
    pub egress: Vec<String>,
    /// Environment variable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    pub env: Vec<String>,
    /// Working directory in the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as this user (over the image's User): NAME, UID, NAME:GROUP or
    /// UID:GID.
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Pulling the image of the transient machine.
    #[command(flatten)]
    pub pull: PullArgs,
    /// Kill the command after SECS seconds (exit status 124).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Forward standard input to the command.
    #[arg(short, long)]
    pub interactive: bool,
    /// Run the command on a pseudo-terminal (raw mode, window size,
    /// signals); stdin must be a terminal. Usually with -i: `-it`.
    #[arg(short, long)]
    pub tty: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `mvm shell`.
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Machine to open the shell in (omit for a fresh transient machine).
    #[arg(value_name = "NAME", add = ArgValueCandidates::new(complete::running_machines))]
    pub name: Option<String>,
    /// Image of the transient machine.
    #[arg(
        long,
        conflicts_with_all = ["name", "template"],
        add = ArgValueCandidates::new(complete::images)
    )]
    pub image: Option<String>,
    /// Template of the transient machine.
    #[arg(long, conflicts_with = "name", add = ArgValueCandidates::new(complete::templates))]
    pub template: Option<String>,
    /// With --template: fail instead of a cold boot when the snapshot
    /// cannot be restored.
    #[arg(long, requires = "template")]
    pub require_snapshot: bool,
    /// Environment variable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    pub env: Vec<String>,
    /// Run the shell as this user (over the image's User).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Pulling the image of the transient machine.
    #[command(flatten)]
    pub pull: PullArgs,
}

/// `mvm completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to print the script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}
