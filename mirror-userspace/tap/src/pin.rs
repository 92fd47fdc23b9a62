//! What outlives the agent, pinned on bpffs so that a restarted (or upgraded) agent takes it
//! over instead of attaching again: the TCX links, and the maps with the rings in them.
//!
//! ```text
//! /sys/fs/bpf/mirror/                 the pin directory (locked by the agent using it)
//!   v1/                               the layout of what follows
//!     links/<ifindex>-<hook>          one TCX link per interface and hook
//!     maps/<object>-<rings>x<bytes>/  the maps of one build of the kernel object
//! ```
//!
//! A link keeps its program attached while it is pinned, whether or not a process holds it:
//! after a crash the old program goes on capturing into the pinned rings, and the next agent
//! swaps its own program into the same link (`BPF_LINK_UPDATE`: no moment without a program,
//! never a second one) and reads on from where the rings are. The maps are those of one
//! build of the object and one ring geometry: another build or geometry gets new maps (what
//! the old rings held is lost, and counted by nobody: say so) and the old ones are unpinned.
use std::{
    fs, io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use mirror_common::Hook;

/// Where `mirror run --pin` pins by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/mirror";
/// The layout version of the directory's contents.
const LAYOUT: &str = "v1";

/// The pin directory of one agent, locked while the agent runs (a second agent, or `mirror
/// cleanup`, is refused meanwhile).
pub(crate) struct PinDir {
    root: PathBuf,
    /// The lock (flock on the directory), held until dropped.
    _lock: OwnedFd,
}

/// A pinned link as the directory names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedLinkEntry {
    pub path: PathBuf,
    pub ifindex: u32,
    pub hook: Hook,
}

impl PinDir {
    /// Creates the directory (on a bpffs) if needed and locks it.
    pub(crate) fn lock(root: &Path) -> Result<PinDir> {
        refuse_mount_root(root)?;
        ensure_bpffs(root)?;
        fs::create_dir_all(root.join(LAYOUT).join("links"))
            .with_context(|| format!("pin directory {}: creating it", root.display()))?;
        let lock = lock(root)?;
        Ok(PinDir { root: root.to_owned(), _lock: lock })
    }

    /// Where the link of `hook` on interface `ifindex` is pinned.
    pub(crate) fn link_path(&self, ifindex: u32, hook: Hook) -> PathBuf {
        links_dir(&self.root).join(format!("{ifindex}-{}", hook_name(hook)))
    }

    /// The directory for the maps of this object and ring geometry (created).
    pub(crate) fn maps_dir(&self, object: &[u8], rings: usize, ring_bytes: u32) -> Result<PathBuf> {
        let name = format!("{:016x}-{rings}x{ring_bytes}", fnv1a(object));
        let dir = self.root.join(LAYOUT).join("maps").join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Unpins every map directory but `keep` (maps of another build or geometry: the
    /// programs using them are gone or about to be swapped out).
    pub(crate) fn remove_other_maps(&self, keep: &Path) {
        let maps = self.root.join(LAYOUT).join("maps");
        for entry in fs::read_dir(&maps).into_iter().flatten().flatten() {
            if entry.path() != keep {
                if let Err(e) = fs::remove_dir_all(entry.path()) {
                    tracing::warn!("unpinning {}: {e}", entry.path().display());
                }
            }
        }
    }

    /// Every link pinned here.
    pub(crate) fn links(&self) -> Vec<PinnedLinkEntry> {
        pinned_links(&self.root)
    }

    /// Removes everything pinned here, and the directory if nothing else is in it: the
    /// links detach once no process holds them (ours are closed by the caller first).
    pub(crate) fn remove_all(self) -> Result<()> {
        remove_tree(&self.root)
    }
}

/// Every link pinned under `root`, without taking the lock (for `mirror status`).
pub fn pinned_links(root: &Path) -> Vec<PinnedLinkEntry> {
    let mut links: Vec<PinnedLinkEntry> = fs::read_dir(links_dir(root))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let (ifindex, hook) = name.split_once('-')?;
            let hook = match hook {
                "ingress" => Hook::Ingress,
                "egress" => Hook::Egress,
                _ => return None,
            };
            Some(PinnedLinkEntry { path: entry.path(), ifindex: ifindex.parse().ok()?, hook })
        })
        .collect();
    links.sort_by_key(|l| (l.ifindex, l.hook as u8));
    links
}

/// `mirror cleanup`: removes the pin directory and everything in it (each link detached
/// with its pin), refused while an agent holds it.
pub fn cleanup(root: &Path) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    refuse_mount_root(root)?;
    let _lock = lock(root)?;
    remove_tree(root)
}

/// Removes what we put under `root` (the layout's directory), then `root` itself unless
/// something else is in it: a directory shared with other tools keeps their pins.
fn remove_tree(root: &Path) -> Result<()> {
    let ours = root.join(LAYOUT);
    if ours.exists() {
        fs::remove_dir_all(&ours).with_context(|| format!("removing {}", ours.display()))?;
    }
    match fs::remove_dir(root) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
        other => other.with_context(|| format!("removing {}", root.display())),
    }
}

/// A bpffs mount itself (`/sys/fs/bpf`) is refused as a pin directory: everyone's pins live
/// there. Ours go in a directory of their own under it.
fn refuse_mount_root(root: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(dir), Some(parent)) = (fs::metadata(root), root.parent()) else { return Ok(()) };
    let parent = fs::metadata(parent).with_context(|| format!("{}", parent.display()))?;
    if dir.dev() != parent.dev() || root == Path::new(BPFFS) {
        bail!(
            "pin: {} is a mount point; give a directory of mirror's own under it (default {})",
            root.display(),
            DEFAULT_PIN_DIR
        );
    }
    Ok(())
}

fn links_dir(root: &Path) -> PathBuf {
    root.join(LAYOUT).join("links")
}

/// A hook's name, as in pin file names and `mirror status`.
pub fn hook_name(hook: Hook) -> &'static str {
    match hook {
        Hook::Ingress => "ingress",
        Hook::Egress => "egress",
    }
}

/// Where bpffs is mounted on a node (the DaemonSet mounts the host's there).
const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

/// Checks that `root` is (or will be created) on a bpffs; mounts one at /sys/fs/bpf if
/// that is where `root` goes and nothing is mounted there yet (as Cilium's agent does).
fn ensure_bpffs(root: &Path) -> Result<()> {
    let existing = root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    if is_bpffs(existing)? {
        return Ok(());
    }
    if existing == Path::new(BPFFS) {
        // Agents starting together must not mount twice (the second mount would hide the
        // first one's pins): one at a time, each looking again under the lock.
        let dir = fs::File::open(BPFFS).with_context(|| format!("opening {BPFFS}"))?;
        // SAFETY: flock on an fd we own; released when `dir` closes.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("locking {BPFFS}"));
        }
        if is_bpffs(Path::new(BPFFS))? {
            return Ok(());
        }
        let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
        let (source, target, fstype) = (c("bpf"), c(BPFFS), c("bpf"));
        // SAFETY: valid NUL-terminated strings; no data.
        let rc = unsafe {
            libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null())
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(e).with_context(|| format!("mounting a bpffs on {BPFFS}"));
        }
        tracing::info!("mounted a bpffs on {BPFFS}");
        return Ok(());
    }
    bail!("pin directory {}: {} is not on a bpffs", root.display(), existing.display())
}

fn is_bpffs(path: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(st.f_type as libc::c_long == BPF_FS_MAGIC)
}

/// An exclusive, non-blocking flock on directory `root`.
fn lock(root: &Path) -> Result<OwnedFd> {
    let dir = fs::File::open(root).with_context(|| format!("opening {}", root.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!("{} is in use by a running agent (stop it first)", root.display());
        }
        return Err(e).with_context(|| format!("locking {}", root.display()));
    }
    Ok(dir.into())
}

/// FNV-1a of the object: which build the pinned maps belong to.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// What the kernel says of a TCX link: its id, its program and the interface it is on (0
/// once the interface is gone). aya's `LinkInfo` keeps the TCX part to itself, so this reads
/// `bpf_link_info` with `BPF_OBJ_GET_INFO_BY_FD` directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcxLinkInfo {
    pub id: u32,
    pub program_id: u32,
    pub ifindex: u32,
    pub hook: Option<Hook>,
}

/// `bpf_link_info` up to its union's TCX member (the kernel fills what fits).
#[repr(C, align(8))]
#[derive(Default)]
struct RawLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    // union (8-byte aligned): for BPF_LINK_TYPE_TCX { ifindex, attach_type }
    tcx_ifindex: u32,
    tcx_attach_type: u32,
    _rest: [u64; 6],
}

/// `BPF_OBJ_GET_INFO_BY_FD`'s attribute.
#[repr(C, align(8))]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_TCX: u32 = 11;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// `BPF_OBJ_GET`'s attribute.
#[repr(C, align(8))]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens the object pinned at `path` (aya's pinned links do not lend their fd).
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = ObjGetAttr { pathname: c_path.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    // SAFETY: the attribute and the path it points to are valid for the call's duration.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &mut attr as *mut ObjGetAttr,
            std::mem::size_of::<ObjGetAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The TCX facts of the link `fd`; an error if it is not a TCX link.
pub fn tcx_link_info(fd: impl AsFd) -> io::Result<TcxLinkInfo> {
    let mut info = RawLinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_fd().as_raw_fd() as u32,
        info_len: std::mem::size_of::<RawLinkInfo>() as u32,
        info: &mut info as *mut RawLinkInfo as u64,
    };
    // SAFETY: the attribute and the buffer it points to are valid for the call's duration,
    // and info_len is the buffer's size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if info.link_type != BPF_LINK_TYPE_TCX {
        return Err(io::Error::other(format!("link type {}, not TCX", info.link_type)));
    }
    let hook = match info.tcx_attach_type {
        BPF_TCX_INGRESS => Some(Hook::Ingress),
        BPF_TCX_EGRESS => Some(Hook::Egress),
        _ => None,
    };
    Ok(TcxLinkInfo { id: info.id, program_id: info.prog_id, ifindex: info.tcx_ifindex, hook })
}
