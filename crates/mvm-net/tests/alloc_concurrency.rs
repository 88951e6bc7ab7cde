//! 20 concurrent allocators, each holding a real `flock` on a shared lock
//! file while it reads the taken set from a directory of JSON records,
//! allocates and writes its own record: every identity must be distinct.

use std::collections::HashSet;
use std::os::fd::AsFd;

use mvm_core::instance::NetAllocation;
use mvm_net::{Subnet, alloc::allocate};

fn read_taken(dir: &std::path::Path) -> Vec<NetAllocation> {
    let mut v = Vec::new();
    for e in fs_err::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            v.push(serde_json::from_slice(&fs_err::read(&p).unwrap()).unwrap());
        }
    }
    v
}

#[test]
fn twenty_concurrent_allocations_under_flock_are_distinct() {
    let tmp = tempfile::tempdir().unwrap();
    let records = tmp.path().join("instances");
    fs_err::create_dir(&records).unwrap();
    let lock = tmp.path().join("lock");
    let subnet = Subnet::parse("172.16.0.0/24").unwrap();
    let barrier = std::sync::Barrier::new(20);
    let results: Vec<NetAllocation> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..20)
            .map(|i| {
                let (records, lock, barrier) = (&records, &lock, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    // Each thread opens its own file description, so flock
                    // excludes the threads from one another as it would
                    // separate processes.
                    let f = fs_err::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(lock)
                        .unwrap();
                    rustix::fs::flock(f.file().as_fd(), rustix::fs::FlockOperation::LockExclusive)
                        .unwrap();
                    let taken = read_taken(records);
                    let name = format!("m{i}");
                    let a = allocate(&taken, &name, &subnet).unwrap();
                    let tmp = records.join(format!("{name}.tmp"));
                    fs_err::write(&tmp, serde_json::to_vec(&a).unwrap()).unwrap();
                    fs_err::rename(&tmp, records.join(format!("{name}.json"))).unwrap();
                    drop(f); // unlock
                    a
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.len(), 20);
    let ips: HashSet<_> = results.iter().map(|a| a.ip).collect();
    let macs: HashSet<_> = results.iter().map(|a| a.mac.clone()).collect();
    let taps: HashSet<_> = results.iter().map(|a| a.tap.clone()).collect();
    assert_eq!((ips.len(), macs.len(), taps.len()), (20, 20, 20));
    // Lowest-free: exactly .2 ..= .21 were handed out.
    let expected: HashSet<_> = subnet.guest_addresses().take(20).collect();
    assert_eq!(ips, expected);
    assert_eq!(read_taken(&records).len(), 20);
}
