//! `guest::configure` on the guest end of a veth pair inside a fresh
//! network namespace.

use std::net::Ipv4Addr;
use std::time::Duration;

use mvm_net::cmdline::find_in_cmdline;
use mvm_net::guest;
use mvm_net::netlink::{Netlink, Route};

use crate::util::{in_netns, skip_unless_root};

#[test]
fn configure_sets_address_route_and_files() {
    if skip_unless_root("configure_sets_address_route_and_files") {
        return;
    }
    let etc = tempfile::tempdir().unwrap();
    let etc_path = etc.path().to_owned();
    in_netns(move || {
        let mut nl = Netlink::open().unwrap();
        nl.add_veth("vhost0", "eth0").unwrap();
        let net =
            find_in_cmdline("console=ttyS0 mvm.net=172.16.0.2/24,172.16.0.1,192.0.2.53 quiet")
                .unwrap()
                .unwrap();
        guest::configure_in("eth0", &net, Some("web"), &etc_path, Duration::from_secs(2)).unwrap();
        // Idempotent.
        guest::configure_in("eth0", &net, Some("web"), &etc_path, Duration::from_secs(2)).unwrap();

        let eth0 = nl.require_link("eth0").unwrap();
        assert!(eth0.up);
        assert_eq!(
            nl.addresses(eth0.index).unwrap(),
            [(Ipv4Addr::new(172, 16, 0, 2), 24)]
        );
        assert!(nl.require_link("lo").unwrap().up);
        let routes = nl.routes().unwrap();
        assert!(
            routes.contains(&Route {
                destination: None,
                gateway: Some(Ipv4Addr::new(172, 16, 0, 1)),
                oif: Some(eth0.index),
            }),
            "{routes:?}"
        );
        let resolv = fs_err::read_to_string(etc_path.join("resolv.conf")).unwrap();
        assert!(resolv.contains("nameserver 192.0.2.53"), "{resolv}");
        let hosts = fs_err::read_to_string(etc_path.join("hosts")).unwrap();
        assert!(hosts.contains("172.16.0.2\tweb"), "{hosts}");

        // A missing interface is a clear error within the deadline.
        let e = guest::configure_in("eth9", &net, None, &etc_path, Duration::from_millis(200))
            .unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(
            chain.contains("eth9") && chain.contains("did not appear"),
            "{chain}"
        );
    });
}

#[test]
fn configure_waits_for_a_late_interface() {
    if skip_unless_root("configure_waits_for_a_late_interface") {
        return;
    }
    let etc = tempfile::tempdir().unwrap();
    let etc_path = etc.path().to_owned();
    in_netns(move || {
        // The interface appears while configure is (usually) already
        // waiting, as when virtio_net is still loading. Threads spawned
        // here inherit this thread's namespace.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let net = mvm_net::GuestNet::qemu_user();
        let waiter = std::thread::spawn(move || {
            tx.send(()).unwrap();
            guest::configure_in("eth0", &net, None, &etc_path, Duration::from_secs(5))
        });
        rx.recv().unwrap();
        let mut nl = Netlink::open().unwrap();
        nl.add_veth("vhost0", "eth0").unwrap();
        waiter.join().unwrap().unwrap();
        let eth0 = nl.require_link("eth0").unwrap();
        assert_eq!(
            nl.addresses(eth0.index).unwrap(),
            [(Ipv4Addr::new(10, 0, 2, 15), 24)]
        );
    });
}
