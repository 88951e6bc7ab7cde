//! Shared helpers: root check and a throw-away network namespace.

use mvm_net::netlink::Netlink;

/// Whether the test runs as root (needed for namespaces, TAPs, iptables).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Print the skip notice and tell the caller to return.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    mvm_core::testing::skip(&format!(
        "SKIPPED: {test}: needs root (network namespaces, TAP, iptables)"
    ));
    true
}

/// Run `f` on a new thread that first moves into a fresh network namespace
/// (`unshare(CLONE_NEWNET)`, per thread). The namespace is owned by that
/// thread: when the thread ends — normally or by panic — the kernel
/// destroys the namespace with every link, address and rule in it.
/// Processes spawned from the thread (iptables) inherit the namespace.
pub fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let h = std::thread::spawn(move || {
        // SAFETY: CLONE_NEWNET only changes this thread's network
        // namespace; it does not unshare memory, files or credentials that
        // the rest of the process relies on.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
            .expect("unshare(CLONE_NEWNET)");
        // Refuse to go on unless this is really a fresh namespace.
        let mut nl = Netlink::open().expect("netlink");
        let links = nl.links().expect("links");
        assert_eq!(
            links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["lo"],
            "not a fresh network namespace"
        );
        nl.set_up(links[0].index, true, "lo").expect("lo up");
        f()
    });
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}
