//! ensure_host / setup_machine / teardown / leftovers / gc, for real, in a
//! fresh network namespace.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use mvm_core::instance::NetAllocation;
use mvm_net::NetConfig;
use mvm_net::alloc::allocate;
use mvm_net::host::{self, Leftover};
use mvm_net::link;
use mvm_net::nat::{self, Iptables, Rule};
use mvm_net::netlink::Netlink;

use crate::util::{in_netns, skip_unless_root};

fn iptables_save() -> String {
    let o = Command::new("iptables-save")
        .output()
        .expect("iptables-save");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[test]
fn host_setup_teardown_leftovers_and_gc_in_a_netns() {
    if skip_unless_root("host_setup_teardown_leftovers_and_gc_in_a_netns") {
        return;
    }
    let host_forward_before = fs_err::read_to_string(link::IP_FORWARD).unwrap();
    in_netns(|| {
        let cfg = NetConfig::default();
        let ipt = Iptables::default();

        // Host: cold, then warm (idempotent).
        let t = Instant::now();
        host::ensure_host(&cfg).unwrap();
        let cold = t.elapsed();
        let t = Instant::now();
        host::ensure_host(&cfg).unwrap();
        let warm = t.elapsed();
        eprintln!("ensure_host: cold {}, warm {}", ms(cold), ms(warm));

        let mut nl = Netlink::open().unwrap();
        let br = nl.require_link("mvmbr0").unwrap();
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        assert!(br.up);
        assert_eq!(
            nl.addresses(br.index).unwrap(),
            [(Ipv4Addr::new(172, 16, 0, 1), 24)]
        );
        assert_eq!(
            fs_err::read_to_string(link::IP_FORWARD).unwrap().trim(),
            "1"
        );

        // Rules: exactly the three host rules, once each, with comments.
        let mut owned = ipt.list_owned().unwrap();
        let mut expected = nat::host_rules("172.16.0.0/24", "mvmbr0");
        owned.sort_by_key(Rule::display);
        expected.sort_by_key(Rule::display);
        assert_eq!(owned, expected);
        let save = iptables_save();
        // The saved text really carries the comment (iptables-save quotes it).
        assert!(
            save.contains("--comment \"mvm:host:mvmbr0\" -j MASQUERADE"),
            "{save}"
        );
        let masq = expected.iter().find(|r| r.table == "nat").unwrap();
        assert!(nat::parse_save(&save).contains(masq), "{save}");

        // Two machines.
        let a = allocate(&[], "a", &cfg.subnet).unwrap();
        let b = allocate(std::slice::from_ref(&a), "b", &cfg.subnet).unwrap();
        let t = Instant::now();
        let na = host::setup_machine(&cfg, &a).unwrap();
        let setup = t.elapsed();
        let nb = host::setup_machine(&cfg, &b).unwrap();
        eprintln!("setup_machine (netlink + TAP): {}", ms(setup));
        for alloc in [&a, &b] {
            let tap = nl.require_link(&alloc.tap).unwrap();
            assert_eq!(tap.kind.as_deref(), Some("tun"), "{}", alloc.tap);
            assert_eq!(tap.master, Some(br.index));
            assert!(tap.up);
            assert!(!tap.carrier, "no VMM holds it yet");
        }
        assert_eq!(link::list_taps(&mut nl).unwrap().len(), 2);

        // A VMM opens the TAP by name with its own flags: it works and
        // gives carrier.
        let vmm = link::open_tap(&a.tap).unwrap();
        assert!(nl.require_link(&a.tap).unwrap().carrier);

        // Leftovers: a stray TAP, a stray rule, a stray TAP held open.
        link::create_tap(&mut nl, "mvm-stray1").unwrap();
        let held = link::open_tap("mvm-held01").unwrap();
        let stray_rule = Rule {
            table: "filter".into(),
            chain: "FORWARD".into(),
            args: [
                "-i",
                "mvm-gone00",
                "-m",
                "comment",
                "--comment",
                "mvm:vm:gone",
                "-j",
                "ACCEPT",
            ]
            .map(String::from)
            .to_vec(),
        };
        assert!(ipt.ensure(&stray_rule).unwrap());
        assert!(!ipt.ensure(&stray_rule).unwrap(), "ensure is idempotent");
        // A foreign rule without the mvm comment is never touched.
        let foreign = Rule {
            table: "filter".into(),
            chain: "FORWARD".into(),
            args: ["-i", "other0", "-j", "ACCEPT"].map(String::from).to_vec(),
        };
        ipt.ensure(&foreign).unwrap();

        let registered = [a.clone(), b.clone()];
        let mut left = host::leftovers(&cfg, &registered, &ipt).unwrap();
        left.sort_by_key(|l| l.to_string());
        assert_eq!(
            left,
            [
                Leftover::Tap {
                    name: "mvm-held01".into(),
                    attached: true
                },
                Leftover::Tap {
                    name: "mvm-stray1".into(),
                    attached: false
                },
                Leftover::Rule(stray_rule.clone()),
            ],
            "{left:#?}"
        );
        let report = host::gc(&cfg, &registered, &ipt).unwrap();
        assert_eq!(report.removed.len(), 2, "{report:?}");
        assert_eq!(
            report.kept,
            [Leftover::Tap {
                name: "mvm-held01".into(),
                attached: true
            }]
        );
        assert!(nl.link("mvm-stray1").unwrap().is_none());
        assert!(!ipt.exists(&stray_rule).unwrap());
        assert!(ipt.exists(&foreign).unwrap());
        assert!(nl.link(&a.tap).unwrap().is_some() && nl.link(&b.tap).unwrap().is_some());
        assert_eq!(ipt.list_owned().unwrap().len(), 3, "host rules kept");
        drop(held); // non-persistent: disappears with its fd
        assert!(nl.link("mvm-held01").unwrap().is_none());

        // Teardown: explicit for a, Drop for b; both idempotent.
        drop(vmm);
        na.teardown().unwrap();
        assert!(nl.link(&a.tap).unwrap().is_none());
        drop(nb);
        assert!(nl.link(&b.tap).unwrap().is_none());
        host::teardown_machine(&a).unwrap();
        host::teardown_machine(&b).unwrap();
        // A persisted TAP outlives its owner until teardown_machine.
        let kept: NetAllocation = host::setup_machine(&cfg, &a).unwrap().persist();
        assert!(nl.link(&kept.tap).unwrap().is_some());
        host::teardown_machine(&kept).unwrap();
        assert!(link::list_taps(&mut nl).unwrap().is_empty());
        assert!(nl.link("mvmbr0").unwrap().is_some(), "bridge stays");

        // setup_machine without a bridge fails and leaves no TAP behind.
        let other = NetConfig::new("172.16.0.0/24", "nobridge0").unwrap();
        let e = host::setup_machine(&other, &a).unwrap_err();
        assert!(e.to_string().contains(&a.tap), "{e}");
        assert!(nl.link(&a.tap).unwrap().is_none());

        // teardown_host removes exactly mvm's objects.
        host::teardown_host(&cfg, &ipt).unwrap();
        assert!(nl.link("mvmbr0").unwrap().is_none());
        assert!(ipt.list_owned().unwrap().is_empty());
        assert!(ipt.exists(&foreign).unwrap());
    });
    // The host's own forwarding switch was not touched.
    assert_eq!(
        fs_err::read_to_string(link::IP_FORWARD).unwrap(),
        host_forward_before
    );
}

#[test]
fn setup_machine_timing_over_ten_taps() {
    if skip_unless_root("setup_machine_timing_over_ten_taps") {
        return;
    }
    in_netns(|| {
        let cfg = NetConfig::default();
        host::ensure_host(&cfg).unwrap();
        let mut taken = Vec::new();
        let mut owners = Vec::new();
        let t = Instant::now();
        for i in 0..10 {
            let a = allocate(&taken, &format!("m{i}"), &cfg.subnet).unwrap();
            owners.push(host::setup_machine(&cfg, &a).unwrap());
            taken.push(a);
        }
        let per = t.elapsed() / 10;
        let t = Instant::now();
        drop(owners);
        let down = t.elapsed() / 10;
        eprintln!(
            "setup_machine: {} per TAP; teardown: {} per TAP",
            ms(per),
            ms(down)
        );
        let mut nl = Netlink::open().unwrap();
        assert!(link::list_taps(&mut nl).unwrap().is_empty());
    });
}

#[test]
fn without_privileges_the_error_says_what_is_needed() {
    if skip_unless_root("without_privileges_the_error_says_what_is_needed") {
        return;
    }
    in_netns(|| {
        // Drop to nobody for this thread only (Linux credentials are per
        // thread at the syscall level); the effective capabilities go too.
        let nobody = rustix::process::Uid::from_raw(65534);
        rustix::thread::set_thread_res_uid(nobody, nobody, nobody).unwrap();
        let e = host::ensure_host(&NetConfig::default()).unwrap_err();
        assert!(matches!(e, host::HostError::NeedsRoot { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("needs root (CAP_NET_ADMIN)") && msg.contains("mvmbr0"),
            "{msg}"
        );
        let a = allocate(&[], "a", &NetConfig::default().subnet).unwrap();
        let e = host::setup_machine(&NetConfig::default(), &a).unwrap_err();
        assert!(matches!(e, host::HostError::NeedsRoot { .. }), "{e:?}");
    });
}

#[test]
fn a_tap_given_to_a_uid_is_attachable_by_that_uid_only() {
    if skip_unless_root("a_tap_given_to_a_uid_is_attachable_by_that_uid_only") {
        return;
    }
    in_netns(|| {
        let cfg = NetConfig::default();
        host::ensure_host(&cfg).unwrap();
        let a = allocate(&[], "own", &cfg.subnet).unwrap();
        let b = allocate(std::slice::from_ref(&a), "other", &cfg.subnet).unwrap();
        let uid = 1_000_065_000;
        let owned = host::setup_machine_owned(&cfg, &a, Some((uid, uid))).unwrap();
        // Another machine's TAP (an unowned TAP is open to any uid that can
        // open the device).
        let plain = host::setup_machine_owned(&cfg, &b, Some((uid + 1, uid + 1))).unwrap();
        // A thread (of this namespace) with the machine's credentials
        // attaches to its own TAP by name, as a jailed Firecracker does,
        // and not to another machine's. Credentials are per thread at the
        // system-call level.
        // (The device is opened as root first: /dev/net/tun may be 0600;
        // the jailer makes the VMM its own node.)
        let (ta, tb) = (a.tap.clone(), b.tap.clone());
        let tun = || {
            fs_err::File::options()
                .read(true)
                .write(true)
                .open(link::TUN_DEVICE)
                .unwrap()
                .into_parts()
                .0
        };
        let (t1, t2) = (tun(), tun());
        let (own, other) = std::thread::spawn(move || {
            let id = rustix::process::Uid::from_raw(uid);
            let gid = rustix::process::Gid::from_raw(uid);
            rustix::thread::set_thread_groups(&[]).unwrap();
            rustix::thread::set_thread_res_gid(gid, gid, gid).unwrap();
            rustix::thread::set_thread_res_uid(id, id, id).unwrap();
            (
                link::attach_tap(t1, &ta).map(drop),
                link::attach_tap(t2, &tb).map(drop),
            )
        })
        .join()
        .unwrap();
        own.expect("the owner attaches to its TAP");
        let e = other.expect_err("another machine's TAP is refused");
        assert!(e.to_string().contains("TUNSETIFF"), "{e}");
        // Idempotent on an existing TAP; teardown as usual.
        link::set_tap_owner(&a.tap, uid, uid).unwrap();
        owned.teardown().unwrap();
        plain.teardown().unwrap();
        host::teardown_host(&cfg, &Iptables::default()).unwrap();
    });
}
