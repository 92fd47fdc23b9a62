//! Attaching a classifier to one hook of one interface: TCX links where the kernel has
//! them (6.6+), otherwise a clsact qdisc and a netlink filter.
use anyhow::{Context, Result};
use aya::{
    programs::{
        tc::{self, NlOptions, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    Ebpf,
};
use mirror_common::{Hook, PROG_EGRESS, PROG_INGRESS};

/// How programs get attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX if the kernel supports it, else clsact + netlink.
    Auto,
    Tcx,
    Netlink,
}

/// One attached program and what must be undone beyond dropping its link.
pub(super) struct Attachment {
    pub iface: String,
    pub hook: Hook,
    pub mode: AttachMode,
    /// We added the clsact qdisc, so we remove it again.
    created_clsact: bool,
}

impl Attachment {
    /// Called after the programs (and with them the links) were dropped.
    pub(crate) fn cleanup(self) -> Result<()> {
        if self.created_clsact {
            super::clsact::delete(&self.iface)
                .with_context(|| format!("deleting the clsact qdisc on {}", self.iface))?;
        }
        Ok(())
    }
}

pub(super) fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    hook: Hook,
    mode: AttachMode,
) -> Result<Attachment> {
    let (name, attach_type) = match hook {
        Hook::Ingress => (PROG_INGRESS, TcAttachType::Ingress),
        Hook::Egress => (PROG_EGRESS, TcAttachType::Egress),
    };
    let prog: &mut SchedClassifier =
        ebpf.program_mut(name).context("program missing")?.try_into()?;
    if mode != AttachMode::Netlink {
        let tcx = TcAttachOptions::TcxOrder(LinkOrder::default());
        match prog.attach_with_options(iface, attach_type, tcx) {
            Ok(_) => {
                return Ok(Attachment {
                    iface: iface.into(),
                    hook,
                    mode: AttachMode::Tcx,
                    created_clsact: false,
                })
            }
            Err(e) if mode == AttachMode::Tcx => {
                return Err(e).with_context(|| format!("TCX attach to {iface} {hook:?}"))
            }
            Err(e) => tracing::info!("TCX attach to {iface} failed ({e}), using clsact + netlink"),
        }
    }
    let created_clsact = match tc::qdisc_add_clsact(iface) {
        Ok(()) => true,
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => false,
        Err(e) => return Err(e).with_context(|| format!("adding a clsact qdisc to {iface}")),
    };
    let mut att =
        Attachment { iface: iface.into(), hook, mode: AttachMode::Netlink, created_clsact };
    let nl = TcAttachOptions::Netlink(NlOptions::default());
    if let Err(e) = prog.attach_with_options(iface, attach_type, nl) {
        // Undo the qdisc now: the caller never sees this attachment.
        let cleanup = std::mem::replace(&mut att.created_clsact, false);
        if cleanup {
            let _ = super::clsact::delete(iface);
        }
        return Err(e).with_context(|| format!("netlink attach to {iface} {hook:?}"));
    }
    Ok(att)
}
