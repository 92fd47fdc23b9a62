//! Attaching a classifier to one hook of one interface: TCX links where the kernel has
//! them (6.6+), otherwise a clsact qdisc and a netlink filter. An [`Attachment`] owns its
//! link: dropping it detaches, and the last attachment of ours on an interface deletes the
//! clsact qdisc if we added it (never one that was there before).
use std::{
    collections::HashMap,
    sync::{Arc, Weak},
};

use anyhow::{Context, Result};
use aya::{
    programs::{
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
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

/// One attached program; detached when dropped.
pub(crate) struct Attachment {
    pub(crate) iface: String,
    /// The interface's identity: its name may change, or be taken by another interface.
    pub(crate) ifindex: u32,
    pub(crate) hook: Hook,
    pub(crate) mode: AttachMode,
    link: Option<SchedClassifierLink>,
    /// The clsact qdisc we added to this interface, shared by our attachments on it.
    _clsact: Option<Arc<ClsactGuard>>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        // The link first: the qdisc (if ours and this was its last user) goes after it.
        drop(self.link.take());
    }
}

/// Deletes a clsact qdisc we added once the last attachment using it is gone.
pub(crate) struct ClsactGuard {
    iface: String,
    ifindex: u32,
}

impl Drop for ClsactGuard {
    fn drop(&mut self) {
        if let Err(e) = super::clsact::delete(self.ifindex) {
            tracing::warn!("deleting the clsact qdisc on {}: {e:#}", self.iface);
        }
    }
}

/// The clsact qdiscs we added, by interface index, while any attachment uses them.
pub(crate) type OwnQdiscs = HashMap<u32, Weak<ClsactGuard>>;

pub(crate) fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    hook: Hook,
    mode: AttachMode,
    qdiscs: &mut OwnQdiscs,
) -> Result<Attachment> {
    let (name, attach_type) = match hook {
        Hook::Ingress => (PROG_INGRESS, TcAttachType::Ingress),
        Hook::Egress => (PROG_EGRESS, TcAttachType::Egress),
    };
    let prog: &mut SchedClassifier =
        ebpf.program_mut(name).context("program missing")?.try_into()?;
    let ifindex = super::iface::ifindex(iface).with_context(|| format!("no interface {iface}"))?;
    if mode != AttachMode::Netlink {
        let tcx = TcAttachOptions::TcxOrder(LinkOrder::default());
        match prog.attach_with_options(iface, attach_type, tcx) {
            Ok(id) => {
                let link = Some(prog.take_link(id)?);
                let iface = iface.to_owned();
                let mode = AttachMode::Tcx;
                return Ok(Attachment { iface, ifindex, hook, mode, link, _clsact: None });
            }
            Err(e) if mode == AttachMode::Tcx => {
                return Err(e).with_context(|| format!("TCX attach to {iface} {hook:?}"))
            }
            Err(e) => tracing::info!("TCX attach to {iface} failed ({e}), using clsact + netlink"),
        }
    }
    let clsact = clsact_for(iface, ifindex, qdiscs)?;
    let nl = TcAttachOptions::Netlink(NlOptions::default());
    // On failure `clsact` drops here, deleting a qdisc we just added for nothing.
    let id = prog
        .attach_with_options(iface, attach_type, nl)
        .with_context(|| format!("netlink attach to {iface} {hook:?}"))?;
    let link = Some(prog.take_link(id)?);
    let iface = iface.to_owned();
    Ok(Attachment { iface, ifindex, hook, mode: AttachMode::Netlink, link, _clsact: clsact })
}

/// Our clsact qdisc on `iface`: the one our other attachments share, or a new one; `None`
/// when someone else's is there (we use it and never delete it).
fn clsact_for(
    iface: &str,
    ifindex: u32,
    qdiscs: &mut OwnQdiscs,
) -> Result<Option<Arc<ClsactGuard>>> {
    qdiscs.retain(|_, guard| guard.strong_count() > 0);
    if let Some(guard) = qdiscs.get(&ifindex).and_then(Weak::upgrade) {
        return Ok(Some(guard));
    }
    match tc::qdisc_add_clsact(iface) {
        Ok(()) => {
            let guard = Arc::new(ClsactGuard { iface: iface.to_owned(), ifindex });
            qdiscs.insert(ifindex, Arc::downgrade(&guard));
            Ok(Some(guard))
        }
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("adding a clsact qdisc to {iface}")),
    }
}
