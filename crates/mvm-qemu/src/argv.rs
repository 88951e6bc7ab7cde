//! The `qemu-system-x86_64 -M microvm` command line, built from a typed
//! description ([`QemuArgs`]) into a `Vec<OsString>` that is passed to
//! `execve` directly — never through a shell.
//!
//! # Layout of the machine
//!
//! - [`MACHINE`]: ACPI stays on because the guest finds its virtio-mmio
//!   devices through ACPI (the Debian kernel has no
//!   `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`); no option ROMs (nothing to
//!   run: QEMU loads the kernel itself); the ISA serial port is the console;
//!   the RTC gives the guest wall-clock time at boot. PIT and PIC stay at
//!   their defaults: the guest calibrates against the PIT under TCG.
//! - `-nodefaults -no-user-config -display none -no-reboot`: no default
//!   devices, no config files, no window; a guest reboot ends QEMU.
//! - serial console (ttyS0) into a file chardev (`console.log`);
//! - the guest agent channel: a virtio-serial port named
//!   [`AGENT_PORT_NAME`] on a Unix-socket chardev with `server=on,wait=on`,
//!   so QEMU does not start the guest before the host end is connected;
//! - QMP on a Unix socket (`server=on,wait=off`), placed before the agent
//!   chardev so that it listens as early as possible;
//! - drives as `virtio-blk-device` in order (`/dev/vda`, `/dev/vdb`, ...);
//! - networking: a TAP (`-netdev tap`) or user-mode (`-netdev user` with
//!   host forwards) backend on a `virtio-net-device`;
//! - `virtio-rng-device` fed from `/dev/urandom`;
//! - optionally guest RAM on a file ([`MemoryFileArgs`]:
//!   `-object memory-backend-file,id=mem0,...` + `memory-backend=mem0` on
//!   the machine), and `-incoming defer` for a restore (see
//!   [`crate::snapshot`]).
//!
//! # Isolated VMMs
//!
//! With [`QemuArgs::fds`] set (a machine with `isolation`), QEMU opens no
//! path of the instance directory itself: every file and socket is opened
//! (or bound) by mvm as root and inherited as a descriptor — kernel and
//! initramfs as `/proc/self/fd/N`, the console and drives through
//! `-add-fd` fd sets (`/dev/fdset/S`), the QMP and agent sockets as
//! listening sockets (`socket,fd=N`, QMP through `-mon`), the TAP as
//! `tap,fd=N` — because QEMU starts as the machine's unprivileged uid.
//! [`QemuArgs::sandbox`] adds [`SANDBOX`] (seccomp: no obsolete syscalls,
//! no set*uid, no fork/exec, no scheduler or resource changes).
//!
//! # Escaping
//!
//! QEMU option values are comma-separated `key=value` lists; a literal
//! comma inside a value is written `,,`. Every path is escaped that way by
//! [`push_opt_path`].

use std::ffi::{OsStr, OsString};
use std::net::IpAddr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use mvm_core::InstanceDir;
use mvm_core::backend::{DriveSpec, VmSpec};

/// The virtio-serial port name the guest agent opens
/// (`/dev/virtio-ports/org.mvm.agent`).
pub const AGENT_PORT_NAME: &str = "org.mvm.agent";

/// The `-M` value.
pub const MACHINE: &str = "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=on";

/// Kernel parameters the QEMU backend always adds.
pub const BASE_KERNEL_ARGS: &[&str] = &["console=ttyS0", "reboot=t", "panic=-1"];

/// Fixed TSC frequency for TCG guests: without it about one boot in six
/// hangs at "tsc: Unable to calibrate against PIT" (ENVIRONMENT.md).
pub const TCG_TSC_ARG: &str = "tsc_early_khz=2000000 tsc=reliable";

/// The `-sandbox` value of an isolated VMM.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The fd set of the console (`/dev/fdset/1`).
const CONSOLE_FDSET: u32 = 1;
/// The fd set of drive `i` is `DRIVE_FDSET + i`.
const DRIVE_FDSET: u32 = 10;

/// Descriptor numbers an isolated QEMU inherits (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedFds {
    /// The kernel, read-only.
    pub kernel: i32,
    /// The initramfs, read-only.
    pub initrd: Option<i32>,
    /// `console.log`, write-only.
    pub console: i32,
    /// The listening QMP socket.
    pub qmp: i32,
    /// The listening agent chardev socket.
    pub guest: i32,
    /// Per drive, in order, the descriptors of its fd set: read-only,
    /// plus read-write for a writable drive (QEMU opens an image read-only
    /// first, then with the drive's mode).
    pub drives: Vec<Vec<i32>>,
    /// The TAP, attached.
    pub tap: Option<i32>,
}

impl PassedFds {
    /// Every descriptor number.
    pub fn all(&self) -> Vec<i32> {
        let mut v = vec![self.kernel, self.console, self.qmp, self.guest];
        v.extend(self.initrd);
        v.extend(self.drives.iter().flatten());
        v.extend(self.tap);
        v
    }
}

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization (`-accel kvm -cpu host`).
    Kvm,
    /// Software emulation (`-accel tcg -cpu max`).
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// Transport protocol of a user-mode host forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwdProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A user-mode networking port forward: host `addr:host_port` to guest
/// `guest_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostForward {
    /// Protocol.
    pub proto: FwdProto,
    /// Host address to bind.
    pub host_addr: IpAddr,
    /// Host port.
    pub host_port: u16,
    /// Guest port (on the guest's user-mode address).
    pub guest_port: u16,
}

impl HostForward {
    fn to_qemu(&self) -> String {
        let proto = match self.proto {
            FwdProto::Tcp => "tcp",
            FwdProto::Udp => "udp",
        };
        let addr = match self.host_addr {
            IpAddr::V4(a) => a.to_string(),
            // IPv6 in brackets (not exercised by the tests; prefer IPv4).
            IpAddr::V6(a) => format!("[{a}]"),
        };
        format!("{proto}:{addr}:{}-:{}", self.host_port, self.guest_port)
    }
}

/// Guest RAM backed by a file instead of anonymous memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryFileArgs {
    /// The file (`mem-path`); its size must be the guest memory size.
    pub path: PathBuf,
    /// `share=on`: guest writes go to the file (a template machine);
    /// `share=off`: the file is mapped privately, copy-on-write, and never
    /// written (a clone restored from it).
    pub share: bool,
}

/// The id of the memory backend object.
pub const MEMORY_BACKEND_ID: &str = "mem0";

/// The guest's network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetArgs {
    /// A TAP device that exists on the host.
    Tap {
        /// TAP name.
        tap: String,
        /// Guest MAC.
        mac: String,
    },
    /// QEMU user-mode networking (slirp): needs no privileges; the guest
    /// gets 10.0.2.15 by DHCP and reaches the host at 10.0.2.2.
    User {
        /// Guest MAC.
        mac: String,
        /// Port forwards from the host into the guest.
        forwards: Vec<HostForward>,
        /// `restrict=on`: the guest reaches nothing, neither the host nor
        /// the outside (the forwards still work); an egress policy of
        /// `deny-all` without root.
        restrict: bool,
    },
}

/// Everything on the QEMU command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuArgs {
    /// Accelerator.
    pub accel: Accel,
    /// vCPUs.
    pub cpus: u8,
    /// Memory (MiB).
    pub memory_mib: u32,
    /// Kernel (bzImage).
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: Option<PathBuf>,
    /// Full kernel command line.
    pub cmdline: String,
    /// Serial console output file.
    pub console_log: PathBuf,
    /// Agent chardev socket (QEMU listens).
    pub guest_socket: PathBuf,
    /// QMP socket (QEMU listens).
    pub qmp_socket: PathBuf,
    /// Drives in guest order.
    pub drives: Vec<DriveSpec>,
    /// Network interface.
    pub net: Option<NetArgs>,
    /// Attach a virtio-rng device fed from `/dev/urandom`.
    pub rng: bool,
    /// Guest RAM on a file (default: anonymous memory).
    pub memory: Option<MemoryFileArgs>,
    /// Start with `-incoming defer` (waiting for `migrate-incoming`).
    pub incoming: bool,
    /// Ids of drives attached with `snapshot=on`: the file is opened
    /// read-only and the guest's writes go to a throwaway copy-on-write
    /// layer (a temporary qcow2 file QEMU unlinks at once, in `$TMPDIR`).
    pub volatile: Vec<String>,
    /// Run under [`SANDBOX`].
    pub sandbox: bool,
    /// Inherited descriptors instead of paths (isolated VMMs).
    pub fds: Option<PassedFds>,
}

/// The kernel command line: backend parameters, then the spec's.
pub fn kernel_cmdline(accel: Accel, spec_args: &[String]) -> String {
    let mut parts: Vec<&str> = BASE_KERNEL_ARGS.to_vec();
    if accel == Accel::Tcg {
        parts.push(TCG_TSC_ARG);
    }
    parts.extend(spec_args.iter().map(String::as_str));
    parts.join(" ")
}

impl QemuArgs {
    /// Describe the VM of `spec` with its files in `dir`. `user_net`
    /// replaces the spec's TAP with user-mode networking (keeping the MAC).
    pub fn from_spec(
        spec: &VmSpec,
        dir: &InstanceDir,
        accel: Accel,
        user_net: Option<&[HostForward]>,
    ) -> Self {
        let net = spec.net.as_ref().map(|n| match user_net {
            Some(fwds) => NetArgs::User {
                mac: n.mac.clone(),
                forwards: fwds.to_vec(),
                restrict: false,
            },
            None => NetArgs::Tap {
                tap: n.tap.clone(),
                mac: n.mac.clone(),
            },
        });
        Self {
            accel,
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            kernel: spec.kernel.bzimage.clone(),
            initrd: spec.initrd.clone(),
            cmdline: kernel_cmdline(accel, &spec.kernel_args),
            console_log: dir.console_log(),
            guest_socket: dir.guest_socket(),
            qmp_socket: dir.qmp_socket(),
            drives: spec.drives.clone(),
            net,
            rng: true,
            memory: None,
            incoming: false,
            volatile: Vec::new(),
            sandbox: spec.isolation.is_some(),
            fds: None,
        }
    }

    /// The argv (without the program name).
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut a = Argv::default();
        match &self.memory {
            None => a.pair("-M", MACHINE),
            Some(_) => a.pair(
                "-M",
                format!("{MACHINE},memory-backend={MEMORY_BACKEND_ID}"),
            ),
        }
        match self.accel {
            Accel::Kvm => {
                a.pair("-accel", "kvm");
                a.pair("-cpu", "host");
            }
            Accel::Tcg => {
                a.pair("-accel", "tcg");
                a.pair("-cpu", "max");
            }
        }
        a.flag("-nodefaults");
        a.flag("-no-user-config");
        a.pair("-display", "none");
        a.flag("-no-reboot");
        a.pair("-m", format!("{}M", self.memory_mib));
        if let Some(m) = &self.memory {
            a.opts("-object", |o| {
                o.push(format!(
                    "memory-backend-file,id={MEMORY_BACKEND_ID},size={}M,mem-path=",
                    self.memory_mib
                ));
                push_opt_path(o, m.path.as_os_str());
                o.push(format!(",share={}", on_off(m.share)));
            });
        }
        a.pair("-smp", self.cpus.to_string());
        if self.sandbox {
            a.pair("-sandbox", SANDBOX);
        }
        let fds = self.fds.as_ref();
        // A restored guest's kernel, initramfs and command line are in the
        // snapshot's memory; loading them again would only slow QEMU's
        // start-up (~15 ms measured for the default image).
        if !self.incoming {
            match fds {
                Some(f) => a.pair("-kernel", format!("/proc/self/fd/{}", f.kernel)),
                None => a.pair("-kernel", &self.kernel),
            }
            match (fds.and_then(|f| f.initrd), &self.initrd) {
                (Some(fd), _) => a.pair("-initrd", format!("/proc/self/fd/{fd}")),
                (None, Some(initrd)) => a.pair("-initrd", initrd),
                (None, None) => {}
            }
            a.pair("-append", &self.cmdline);
        }

        // Serial console into a file.
        if let Some(f) = fds {
            a.pair("-add-fd", format!("fd={},set={CONSOLE_FDSET}", f.console));
            a.pair(
                "-chardev",
                format!("file,id=con0,path=/dev/fdset/{CONSOLE_FDSET}"),
            );
        } else {
            a.opts("-chardev", |o| {
                o.push("file,id=con0,path=");
                push_opt_path(o, self.console_log.as_os_str());
            });
        }
        a.pair("-serial", "chardev:con0");

        // QMP first: it listens before QEMU blocks on the agent chardev.
        if let Some(f) = fds {
            a.pair(
                "-chardev",
                format!("socket,id=qmp0,fd={},server=on,wait=off", f.qmp),
            );
            a.pair("-mon", "chardev=qmp0,mode=control");
        } else {
            a.opts("-qmp", |o| {
                o.push("unix:");
                push_opt_path(o, self.qmp_socket.as_os_str());
                o.push(",server=on,wait=off");
            });
        }

        // Guest agent channel.
        a.pair("-device", "virtio-serial-device");
        if let Some(f) = fds {
            a.pair(
                "-chardev",
                format!("socket,id=agent0,fd={},server=on,wait=on", f.guest),
            );
        } else {
            a.opts("-chardev", |o| {
                o.push("socket,id=agent0,path=");
                push_opt_path(o, self.guest_socket.as_os_str());
                o.push(",server=on,wait=on");
            });
        }
        a.pair(
            "-device",
            format!("virtserialport,chardev=agent0,name={AGENT_PORT_NAME}"),
        );

        for (i, d) in self.drives.iter().enumerate() {
            let passed = fds.and_then(|f| f.drives.get(i));
            for fd in passed.into_iter().flatten() {
                a.pair("-add-fd", format!("fd={fd},set={}", DRIVE_FDSET + i as u32));
            }
            a.opts("-drive", |o| {
                o.push(format!("id={},file=", d.id));
                match passed {
                    Some(_) => o.push(format!("/dev/fdset/{}", DRIVE_FDSET + i as u32)),
                    None => push_opt_path(o, d.path.as_os_str()),
                }
                o.push(format!(
                    ",format=raw,if=none,readonly={},cache=writeback",
                    on_off(d.read_only)
                ));
                if !d.read_only {
                    o.push(",discard=unmap");
                }
                if self.volatile.contains(&d.id) {
                    o.push(",snapshot=on");
                }
            });
            a.pair("-device", format!("virtio-blk-device,drive={}", d.id));
        }

        match &self.net {
            None => {}
            Some(NetArgs::Tap { tap, mac }) => {
                match fds.and_then(|f| f.tap) {
                    Some(fd) => a.pair("-netdev", format!("tap,id=net0,fd={fd}")),
                    None => a.pair(
                        "-netdev",
                        format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
                    ),
                }
                a.pair(
                    "-device",
                    format!("virtio-net-device,netdev=net0,mac={mac}"),
                );
            }
            Some(NetArgs::User {
                mac,
                forwards,
                restrict,
            }) => {
                let mut s = String::from("user,id=net0");
                if *restrict {
                    s.push_str(",restrict=on");
                }
                for f in forwards {
                    s.push_str(",hostfwd=");
                    s.push_str(&f.to_qemu());
                }
                a.pair("-netdev", s);
                a.pair(
                    "-device",
                    format!("virtio-net-device,netdev=net0,mac={mac}"),
                );
            }
        }

        if self.rng {
            a.pair("-object", "rng-random,id=rng0,filename=/dev/urandom");
            a.pair("-device", "virtio-rng-device,rng=rng0");
        }
        if self.incoming {
            a.pair("-incoming", "defer");
        }
        a.0
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// Append `path` to a QEMU option string, doubling commas.
pub fn push_opt_path(out: &mut OsString, path: &OsStr) {
    let mut bytes = Vec::with_capacity(path.len());
    for &b in path.as_bytes() {
        bytes.push(b);
        if b == b',' {
            bytes.push(b',');
        }
    }
    out.push(OsString::from_vec(bytes));
}

#[derive(Default)]
struct Argv(Vec<OsString>);

impl Argv {
    fn flag(&mut self, f: &str) {
        self.0.push(f.into());
    }
    fn pair(&mut self, f: &str, v: impl AsRef<OsStr>) {
        self.0.push(f.into());
        self.0.push(v.as_ref().to_owned());
    }
    fn opts(&mut self, f: &str, build: impl FnOnce(&mut OsString)) {
        let mut v = OsString::new();
        build(&mut v);
        self.pair(f, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvm_core::backend::{KernelPaths, NetSpec};

    fn spec() -> VmSpec {
        VmSpec {
            name: "web".into(),
            cpus: 2,
            memory_mib: 512,
            kernel: KernelPaths {
                bzimage: "/img/vmlinuz".into(),
                vmlinux: "/img/vmlinux".into(),
            },
            initrd: Some("/img/initrd.img".into()),
            kernel_args: vec!["mvm.name=web".into()],
            drives: vec![
                DriveSpec {
                    id: "rootfs".into(),
                    path: "/img/root.ext4".into(),
                    read_only: true,
                },
                DriveSpec {
                    id: "disk".into(),
                    path: "/h/i/web/disk,1.ext4".into(),
                    read_only: false,
                },
            ],
            net: Some(NetSpec {
                tap: "mvmtap0".into(),
                mac: "06:00:0a:00:00:02".into(),
            }),
            vsock_cid: 3,
            transient: false,
            isolation: None,
        }
    }

    #[test]
    fn isolated_argv_uses_descriptors_and_the_sandbox() {
        let dir = InstanceDir::new("/h/i/web");
        let mut a = QemuArgs::from_spec(&spec(), &dir, Accel::Tcg, None);
        a.sandbox = true;
        a.fds = Some(PassedFds {
            kernel: 10,
            initrd: Some(11),
            console: 12,
            qmp: 13,
            guest: 14,
            drives: vec![vec![15], vec![16, 18]],
            tap: Some(17),
        });
        let v = render(&a.to_argv()).join(" ");
        for want in [
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-kernel /proc/self/fd/10",
            "-initrd /proc/self/fd/11",
            "-add-fd fd=12,set=1 -chardev file,id=con0,path=/dev/fdset/1",
            "-chardev socket,id=qmp0,fd=13,server=on,wait=off -mon chardev=qmp0,mode=control",
            "-chardev socket,id=agent0,fd=14,server=on,wait=on",
            "-add-fd fd=15,set=10 -drive id=rootfs,file=/dev/fdset/10,",
            "-add-fd fd=16,set=11 -add-fd fd=18,set=11 -drive id=disk,file=/dev/fdset/11,",
            "-netdev tap,id=net0,fd=17",
        ] {
            assert!(v.contains(want), "{want} not in {v}");
        }
        assert!(!v.contains("/h/i/web"), "an instance path in {v}");
        assert!(!v.contains("-qmp"), "{v}");
    }

    fn render(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn tcg_argv_is_complete_and_ordered() {
        let dir = InstanceDir::new("/h/i/web");
        let argv = render(&QemuArgs::from_spec(&spec(), &dir, Accel::Tcg, None).to_argv());
        let expected: Vec<&str> = vec![
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=on",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-m",
            "512M",
            "-smp",
            "2",
            "-kernel",
            "/img/vmlinuz",
            "-initrd",
            "/img/initrd.img",
            "-append",
            "console=ttyS0 reboot=t panic=-1 tsc_early_khz=2000000 tsc=reliable mvm.name=web",
            "-chardev",
            "file,id=con0,path=/h/i/web/console.log",
            "-serial",
            "chardev:con0",
            "-qmp",
            "unix:/h/i/web/qmp.sock,server=on,wait=off",
            "-device",
            "virtio-serial-device",
            "-chardev",
            "socket,id=agent0,path=/h/i/web/guest.sock,server=on,wait=on",
            "-device",
            "virtserialport,chardev=agent0,name=org.mvm.agent",
            "-drive",
            "id=rootfs,file=/img/root.ext4,format=raw,if=none,readonly=on,cache=writeback",
            "-device",
            "virtio-blk-device,drive=rootfs",
            "-drive",
            "id=disk,file=/h/i/web/disk,,1.ext4,format=raw,if=none,readonly=off,cache=writeback,discard=unmap",
            "-device",
            "virtio-blk-device,drive=disk",
            "-netdev",
            "tap,id=net0,ifname=mvmtap0,script=no,downscript=no",
            "-device",
            "virtio-net-device,netdev=net0,mac=06:00:0a:00:00:02",
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-device,rng=rng0",
        ];
        assert_eq!(argv, expected);
    }

    #[test]
    fn file_backed_memory_and_incoming() {
        let dir = InstanceDir::new("/h/i/web");
        let mut args = QemuArgs::from_spec(&spec(), &dir, Accel::Tcg, None);
        args.memory = Some(MemoryFileArgs {
            path: "/t/my,mem".into(),
            share: false,
        });
        args.incoming = true;
        let argv = render(&args.to_argv());
        let pos = |s: &str| argv.iter().position(|a| a == s).unwrap();
        assert_eq!(
            argv[pos("-M") + 1],
            "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=on,memory-backend=mem0"
        );
        assert_eq!(
            argv[pos("-object") + 1],
            "memory-backend-file,id=mem0,size=512M,mem-path=/t/my,,mem,share=off"
        );
        assert_eq!(argv[pos("-m") + 1], "512M");
        assert_eq!(&argv[argv.len() - 2..], ["-incoming", "defer"]);
        assert!(
            !argv
                .iter()
                .any(|a| a == "-kernel" || a == "-initrd" || a == "-append")
        );
        args.memory.as_mut().unwrap().share = true;
        let argv = render(&args.to_argv());
        assert!(argv.iter().any(|a| a.ends_with(",share=on")));
    }

    #[test]
    fn kvm_uses_host_cpu_and_no_tsc_override() {
        let dir = InstanceDir::new("/h/i/web");
        let argv = render(&QemuArgs::from_spec(&spec(), &dir, Accel::Kvm, None).to_argv());
        let pos = |s: &str| argv.iter().position(|a| a == s).unwrap();
        assert_eq!(argv[pos("-accel") + 1], "kvm");
        assert_eq!(argv[pos("-cpu") + 1], "host");
        assert!(argv[pos("-M") + 1].contains("acpi=on"));
        assert!(!argv[pos("-append") + 1].contains("tsc_early_khz"));
    }

    #[test]
    fn volatile_drives_get_a_throwaway_layer() {
        let dir = InstanceDir::new("/h/i/web");
        let mut a = QemuArgs::from_spec(&spec(), &dir, Accel::Tcg, None);
        a.volatile = vec!["disk".into()];
        let argv = render(&a.to_argv());
        let drives: Vec<&String> = argv.iter().filter(|s| s.starts_with("id=")).collect();
        assert!(!drives[0].contains("snapshot=on"), "{}", drives[0]);
        assert!(drives[1].ends_with(",snapshot=on"), "{}", drives[1]);
    }

    #[test]
    fn user_net_with_forwards_and_no_net() {
        let dir = InstanceDir::new("/h/i/web");
        let fwds = [
            HostForward {
                proto: FwdProto::Tcp,
                host_addr: "127.0.0.1".parse().unwrap(),
                host_port: 8080,
                guest_port: 80,
            },
            HostForward {
                proto: FwdProto::Udp,
                host_addr: "0.0.0.0".parse().unwrap(),
                host_port: 5353,
                guest_port: 53,
            },
        ];
        let argv = render(&QemuArgs::from_spec(&spec(), &dir, Accel::Tcg, Some(&fwds)).to_argv());
        let pos = argv.iter().position(|a| a == "-netdev").unwrap();
        assert_eq!(
            argv[pos + 1],
            "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:0.0.0.0:5353-:53"
        );
        assert_eq!(
            argv[pos + 3],
            "virtio-net-device,netdev=net0,mac=06:00:0a:00:00:02"
        );

        // deny-all without root: the guest is isolated, forwards stay.
        let mut a = QemuArgs::from_spec(&spec(), &dir, Accel::Tcg, Some(&fwds[..1]));
        if let Some(NetArgs::User { restrict, .. }) = &mut a.net {
            *restrict = true;
        }
        let argv = render(&a.to_argv());
        assert_eq!(
            argv[pos + 1],
            "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:8080-:80"
        );

        let mut s = spec();
        s.net = None;
        s.initrd = None;
        s.drives.clear();
        let argv = render(&QemuArgs::from_spec(&s, &dir, Accel::Tcg, Some(&fwds)).to_argv());
        for absent in ["-netdev", "-initrd", "-drive"] {
            assert!(!argv.iter().any(|a| a == absent), "{absent} in {argv:?}");
        }
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        let mut o = OsString::from("path=");
        push_opt_path(&mut o, OsStr::new("/a,b,,c"));
        assert_eq!(o, "path=/a,,b,,,,c");
    }
}
