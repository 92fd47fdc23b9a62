//! Pod identity without the API server: the names of the network namespaces under
//! `/run/netns` (where `ip netns`, and CNI plugins run by containerd or CRI-O, bind-mount a
//! pod's namespace), matched to a veth by its peer's namespace id (`IFLA_LINK_NETNSID`,
//! [`crate::Link::peer_netns_id`]). The id of each named namespace comes from rtnetlink
//! (`RTM_GETNSID` with the namespace's fd): ids are per observing namespace, so they are
//! asked in ours, the one the links are reported in.
use std::{
    collections::HashMap,
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use netlink_packet_route::{
    nsid::{NsidAttribute, NsidMessage},
    RouteNetlinkMessage,
};
use netlink_sys::Socket;

/// Where named network namespaces live.
pub const NETNS_DIR: &str = "/run/netns";

/// Namespace names by id, read again when the directory changed.
pub struct NetnsNames {
    dir: PathBuf,
    by_id: HashMap<i32, String>,
    /// The directory's modification time at the last scan: no rescan while it is the same.
    scanned: Option<SystemTime>,
    /// When a scan last missed an id asked for.
    missed: Option<Instant>,
}

impl NetnsNames {
    pub fn new(dir: &Path) -> NetnsNames {
        NetnsNames { dir: dir.to_owned(), by_id: HashMap::new(), scanned: None, missed: None }
    }

    /// The name of the namespace with id `id` (in ours), if it is one of the directory's.
    /// The directory is read again whenever it changed: ids of deleted namespaces are given
    /// to new ones, so a known id may name another namespace now.
    pub fn name(&mut self, id: i32) -> Option<&str> {
        let modified = std::fs::metadata(&self.dir).and_then(|m| m.modified()).ok();
        // Also on a miss, at most once a second: a runtime creates the file, then
        // bind-mounts the namespace on it, which does not change the directory.
        let stale = self.missed.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        let unknown = !self.by_id.contains_key(&id) && stale;
        if modified.is_none() || modified != self.scanned || unknown {
            match self.rescan() {
                Ok(()) => self.scanned = modified,
                Err(e) => tracing::debug!("reading {}: {e}", self.dir.display()),
            }
            self.missed = (!self.by_id.contains_key(&id)).then(Instant::now);
        }
        self.by_id.get(&id).map(String::as_str)
    }

    fn rescan(&mut self) -> io::Result<()> {
        self.by_id.clear();
        let socket = crate::netlink::socket()?;
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let Ok(file) = std::fs::File::open(entry.path()) else { continue };
            if let Some(id) = nsid(&socket, file.as_raw_fd())? {
                self.by_id.insert(id, entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(())
    }
}

/// The id our namespace has for the namespace of `fd`, if it has one.
fn nsid(socket: &Socket, fd: i32) -> io::Result<Option<i32>> {
    let mut message = NsidMessage::default();
    message.attributes.push(NsidAttribute::Fd(fd as u32));
    let mut id = None;
    crate::netlink::request(socket, RouteNetlinkMessage::GetNsId(message), fd as u32, |m| {
        if let RouteNetlinkMessage::NewNsId(m) = m {
            id = m.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                _ => None,
            });
        }
    })?;
    Ok(id)
}
