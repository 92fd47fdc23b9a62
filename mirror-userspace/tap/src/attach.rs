//! Attaching a classifier to one hook of one interface: TCX links where the kernel has
//! them (6.6+), otherwise a clsact qdisc and a netlink filter. An [`Attachment`] owns its
//! link: dropping it detaches, and the last attachment of ours on an interface deletes the
//! clsact qdisc if we added it (never one that was there before).
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Weak},
};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf,
};
use mirror_common::{Hook, PROG_EGRESS, PROG_INGRESS, PROG_XDP};

/// How programs get attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX if the kernel supports it, else clsact + netlink.
    Auto,
    Tcx,
    Netlink,
    /// XDP in the driver (reported: XDP is chosen with `TapSettings::xdp`).
    XdpNative,
    /// XDP on the generic path, where the driver has none (reported).
    XdpGeneric,
}

/// An attachment's kernel link, held for its drop (which detaches).
#[expect(dead_code, reason = "held, never read: dropping it detaches")]
enum Link {
    Tc(SchedClassifierLink),
    Xdp(XdpLink),
}

/// One attached program; detached when dropped.
pub(crate) struct Attachment {
    pub(crate) iface: String,
    /// The interface's identity: its name may change, or be taken by another interface.
    pub(crate) ifindex: u32,
    pub(crate) hook: Hook,
    pub(crate) mode: AttachMode,
    link: Option<Link>,
    /// Where the link is pinned: unpinned when detached (a pinned link stays attached).
    pin: Option<PathBuf>,
    /// Taken over from an earlier agent's pin rather than created.
    pub(crate) adopted: bool,
    /// The clsact qdisc we added to this interface, shared by our attachments on it.
    _clsact: Option<Arc<ClsactGuard>>,
}

impl Attachment {
    /// The kernel's facts of the link, if pinned (then it is a TCX link).
    pub(crate) fn link_info(&self) -> Option<crate::pin::TcxLinkInfo> {
        let fd = crate::pin::open_pinned(self.pin.as_deref()?).ok()?;
        crate::pin::tcx_link_info(fd).ok()
    }

    /// Leaves the link attached after this is dropped (its pin stays), for the next agent.
    pub(crate) fn keep_pinned(&mut self) {
        self.pin = None;
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Some(pin) = self.pin.take() {
            if let Err(e) = std::fs::remove_file(&pin) {
                tracing::warn!("unpinning {}: {e}", pin.display());
            }
        }
        // The link next: the qdisc (if ours and this was its last user) goes after it.
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
    let (prog, attach_type) = program(ebpf, hook)?;
    let ifindex = super::iface::ifindex(iface).with_context(|| format!("no interface {iface}"))?;
    let new = |mode, link, clsact| Attachment {
        iface: iface.to_owned(),
        ifindex,
        hook,
        mode,
        link: Some(Link::Tc(link)),
        pin: None,
        adopted: false,
        _clsact: clsact,
    };
    if mode != AttachMode::Netlink {
        let tcx = TcAttachOptions::TcxOrder(LinkOrder::default());
        match prog.attach_with_options(iface, attach_type, tcx) {
            Ok(id) => return Ok(new(AttachMode::Tcx, prog.take_link(id)?, None)),
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
    Ok(new(AttachMode::Netlink, prog.take_link(id)?, clsact))
}

/// A TCX attachment pinned at `pin`: the link pinned there if it is still on `iface`'s
/// `hook` (its program swapped for ours in place), else a new link pinned there.
pub(crate) fn attach_pinned(
    ebpf: &mut Ebpf,
    iface: &str,
    hook: Hook,
    pin: &Path,
) -> Result<Attachment> {
    let (prog, attach_type) = program(ebpf, hook)?;
    let ifindex = super::iface::ifindex(iface).with_context(|| format!("no interface {iface}"))?;
    let mut adopted = false;
    let link = match pin.exists().then(|| adopt(prog, pin, ifindex, hook)) {
        Some(Ok(link)) => {
            adopted = true;
            link
        }
        other => {
            if let Some(Err(e)) = other {
                tracing::info!("{}: {e:#}; attaching anew", pin.display());
                std::fs::remove_file(pin)
                    .with_context(|| format!("unpinning {}", pin.display()))?;
            }
            let tcx = TcAttachOptions::TcxOrder(LinkOrder::default());
            let id = prog
                .attach_with_options(iface, attach_type, tcx)
                .with_context(|| format!("TCX attach to {iface} {hook:?} (pinning needs TCX)"))?;
            let fd: FdLink = prog.take_link(id)?.try_into()?;
            let pinned = fd.pin(pin).with_context(|| format!("pinning {}", pin.display()))?;
            SchedClassifierLink::try_from(FdLink::from(pinned))?
        }
    };
    Ok(Attachment {
        iface: iface.to_owned(),
        ifindex,
        hook,
        mode: AttachMode::Tcx,
        link: Some(Link::Tc(link)),
        pin: Some(pin.to_owned()),
        adopted,
        _clsact: None,
    })
}

/// The XDP program on `iface`: in the driver where it has XDP, else on the generic path.
pub(crate) fn attach_xdp(ebpf: &mut Ebpf, iface: &str) -> Result<Attachment> {
    let prog: &mut Xdp = ebpf.program_mut(PROG_XDP).context("program missing")?.try_into()?;
    let ifindex = super::iface::ifindex(iface).with_context(|| format!("no interface {iface}"))?;
    let (id, mode) = match prog.attach(iface, XdpMode::Driver) {
        Ok(id) => (id, AttachMode::XdpNative),
        Err(e) => {
            tracing::info!("native XDP on {iface} refused ({e}): the generic path");
            let id = prog
                .attach(iface, XdpMode::Skb)
                .with_context(|| format!("XDP attach to {iface}"))?;
            (id, AttachMode::XdpGeneric)
        }
    };
    Ok(Attachment {
        iface: iface.to_owned(),
        ifindex,
        hook: Hook::Ingress,
        mode,
        link: Some(Link::Xdp(prog.take_link(id)?)),
        pin: None,
        adopted: false,
        _clsact: None,
    })
}

/// Takes over the link pinned at `pin`: checks it is still on interface `ifindex`'s `hook`
/// (0 once its interface was deleted) and swaps our program into it.
fn adopt(
    prog: &mut SchedClassifier,
    pin: &Path,
    ifindex: u32,
    hook: Hook,
) -> Result<SchedClassifierLink> {
    let info = crate::pin::open_pinned(pin)
        .and_then(crate::pin::tcx_link_info)
        .context("reading the pinned link")?;
    if info.ifindex != ifindex || info.hook != Some(hook) {
        bail!(
            "the pinned link is on interface {} {:?}, not on {ifindex} {hook:?}",
            info.ifindex,
            info.hook
        );
    }
    let fd = FdLink::from(PinnedLink::from_pin(pin).context("opening the pinned link")?);
    let id = prog.attach_to_link(SchedClassifierLink::try_from(fd)?).context("BPF_LINK_UPDATE")?;
    Ok(prog.take_link(id)?)
}

fn program(ebpf: &mut Ebpf, hook: Hook) -> Result<(&mut SchedClassifier, TcAttachType)> {
    let (name, attach_type) = match hook {
        Hook::Ingress => (PROG_INGRESS, TcAttachType::Ingress),
        Hook::Egress => (PROG_EGRESS, TcAttachType::Egress),
    };
    let prog: &mut SchedClassifier =
        ebpf.program_mut(name).context("program missing")?.try_into()?;
    Ok((prog, attach_type))
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
