//! The backend-neutral description of a machine's VM ([`VmSpec`]), built
//! from its record, its image and its drives.

use mvm_core::backend::{DriveSpec, NetSpec, VmSpec};
use mvm_core::instance::{DriveRole, InstanceRecord};

use crate::resources::{drives, network};
use crate::{Runtime, RuntimeError};

/// The MAC QEMU user-mode networking uses (slirp's default).
const USER_NET_MAC: &str = "52:54:00:12:34:56";

/// The VM of machine `rec`.
pub fn for_record(rt: &Runtime, rec: &InstanceRecord) -> Result<VmSpec, RuntimeError> {
    let image = mvm_image::get(rt.home(), &rec.image)?;
    if image.digest != rec.image_digest {
        tracing::warn!(
            "image {:?} changed since machine {:?} was created; booting the new kernel/initramfs",
            rec.image,
            rec.name
        );
    }
    let mut kernel_args = vec![format!("mvm.hostname={}", rec.name)];
    let drives: Vec<DriveSpec> = rec
        .drives
        .iter()
        .map(|d| DriveSpec {
            id: d.id.clone(),
            path: d.path.clone(),
            read_only: d.read_only,
        })
        .collect();
    if rec
        .drives
        .first()
        .is_some_and(|d| d.role == DriveRole::Root)
    {
        kernel_args.push("mvm.root=/dev/vda".into());
    }
    let net = match network::Attachment::of(rec) {
        network::Attachment::Tap(alloc) => {
            kernel_args.push(mvm_net::cmdline::format_cmdline(
                &alloc,
                &crate::resources::egress::guest_dns(rt.config()),
            ));
            Some(NetSpec {
                tap: alloc.tap.clone(),
                mac: alloc.mac.clone(),
            })
        }
        network::Attachment::UserMode => {
            kernel_args.push(mvm_net::GuestNet::qemu_user().to_cmdline());
            Some(NetSpec {
                tap: String::new(),
                mac: USER_NET_MAC.into(),
            })
        }
        network::Attachment::None => None,
    };
    kernel_args.extend(drives::kernel_args(&rt.dir(&rec.name))?);
    Ok(VmSpec {
        name: rec.name.clone(),
        cpus: rec.cpus,
        memory_mib: rec.memory_mib,
        kernel: image.kernel.clone(),
        initrd: Some(image.initramfs.clone()),
        kernel_args,
        drives,
        net,
        vsock_cid: rec.vsock_cid.unwrap_or(3),
        // Every VMM dies with its supervisor (its owner), persistent or not.
        transient: true,
        isolation: None,
    })
}
