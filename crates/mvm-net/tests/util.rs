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

/// A network namespace held by a file descriptor (of
/// `/proc/thread-self/ns/net`, opened by a thread that unshared into it).
/// The kernel destroys it when the fd is closed and no thread, process or
/// socket is inside any more. Creating it panics rather than letting a test
/// go on in the host's namespace.
pub struct Netns {
    fd: std::os::fd::OwnedFd,
}

impl Netns {
    /// A fresh namespace with only `lo`, up.
    pub fn new() -> Self {
        let fd = std::thread::spawn(|| {
            // SAFETY: CLONE_NEWNET only changes this (short-lived) thread's
            // network namespace.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                .expect("unshare(CLONE_NEWNET): cannot create a network namespace");
            let mut nl = Netlink::open().expect("netlink");
            let links = nl.links().expect("links");
            assert_eq!(
                links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
                ["lo"],
                "not a fresh network namespace"
            );
            nl.set_up(links[0].index, true, "lo").expect("lo up");
            let f = fs_err::File::open("/proc/thread-self/ns/net").expect("open ns/net");
            std::os::fd::OwnedFd::from(f.into_parts().0)
        })
        .join()
        .expect("namespace thread");
        Self { fd }
    }

    /// The namespace's fd.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    fn enter(fd: &std::os::fd::OwnedFd) {
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(fd),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns(CLONE_NEWNET)");
    }

    /// Run `f` on a thread inside the namespace and wait for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        match self.spawn(f).join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Start `f` on a thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let fd = self.fd.try_clone().expect("dup ns fd");
        std::thread::spawn(move || {
            Self::enter(&fd);
            drop(fd);
            f()
        })
    }
}
