//! Following pods on a node: interfaces whose names match the patterns (`veth*|cali*`) are
//! attached as they appear and detached as they go, told by rtnetlink
//! ([`mirror_tap::LinkWatcher`]). Interfaces are known by index, so a rename keeps the
//! attachment (unless the new name no longer matches) and a name taken over by a new
//! interface is a new interface. An interface attached already when first seen (taken over
//! from an earlier agent's pins) is followed from then if it matches. Interfaces given by
//! name are the tap's: never followed, so never detached here.
use std::collections::HashMap;

use mirror_tap::{InterfacePatterns, Link, LinkEvent, LinkWatcher, NetnsNames, Tap, NETNS_DIR};

use crate::{cri::CriPods, metrics::Metrics, pods::Pods};

/// Where the follower attaches and detaches: the tap, by interface index.
pub trait FollowedTap {
    fn attach(&mut self, link: &Link) -> anyhow::Result<()>;
    /// Detaches interface `ifindex` (also when it is already gone).
    fn detach(&mut self, ifindex: u32);
    /// Attached already (taken over from a pin at start).
    fn is_attached(&self, ifindex: u32) -> bool;
}

impl FollowedTap for Tap {
    fn attach(&mut self, link: &Link) -> anyhow::Result<()> {
        self.attach_interface(&link.name)
    }

    fn detach(&mut self, ifindex: u32) {
        self.detach_index(ifindex);
    }

    fn is_attached(&self, ifindex: u32) -> bool {
        self.is_attached_index(ifindex)
    }
}

/// The interfaces followed so far, and the link notifications that change them.
pub struct Follower {
    watcher: LinkWatcher,
    /// None: nothing is followed any more (a reload took the patterns away).
    patterns: Option<InterfacePatterns>,
    /// Interfaces the follower attached, by index.
    followed: HashMap<u32, Followed>,
    /// Pods by their network namespace's id: the names under /run/netns.
    netns: NetnsNames,
    /// The pods behind followed interfaces, for the watch stream.
    pods: Pods,
    /// Pod names and namespaces from the container runtime, where it is reachable.
    cri: Option<CriPods>,
    /// Interfaces given by name: the tap's, never followed (nor detached) here.
    statics: Vec<String>,
}

/// A followed interface: its current name, and its pod (its peer's namespace name) if known.
struct Followed {
    name: String,
    pod: Option<String>,
}

impl Follower {
    /// Starts watching (before the list of links is read: nothing created meanwhile is
    /// missed). Within a tokio runtime.
    pub fn start(
        patterns: InterfacePatterns,
        pods: Pods,
        cri: Option<CriPods>,
    ) -> std::io::Result<Follower> {
        Ok(Follower {
            watcher: LinkWatcher::start()?,
            patterns: Some(patterns),
            followed: HashMap::new(),
            netns: NetnsNames::new(std::path::Path::new(NETNS_DIR)),
            pods,
            cri,
            statics: Vec::new(),
        })
    }

    /// The interfaces given by name: not followed from now on (those followed so far are
    /// let go of, still attached: they are the tap's now).
    pub fn set_static(&mut self, names: &[String]) {
        self.statics = names.to_vec();
        self.followed.retain(|_, f| !names.contains(&f.name));
    }

    /// Follows these patterns from the next list of links on (asked for now).
    pub fn set_patterns(&mut self, patterns: Option<InterfacePatterns>) -> std::io::Result<()> {
        self.patterns = patterns;
        self.watcher.relist()
    }

    /// The next change to apply.
    pub async fn next(&mut self) -> std::io::Result<LinkEvent> {
        self.watcher.next().await
    }

    /// Applies one change to `tap`.
    pub async fn apply(&mut self, event: LinkEvent, tap: &mut impl FollowedTap, metrics: &Metrics) {
        match event {
            LinkEvent::Listed(links) => {
                let gone: Vec<u32> = self
                    .followed
                    .keys()
                    .filter(|i| !links.iter().any(|l| l.ifindex == **i))
                    .copied()
                    .collect();
                for ifindex in gone {
                    self.unfollow(ifindex, tap, metrics, "gone");
                }
                for link in &links {
                    self.changed(link, tap, metrics).await;
                }
            }
            LinkEvent::Changed(link) => self.changed(&link, tap, metrics).await,
            LinkEvent::Gone(ifindex) => self.unfollow(ifindex, tap, metrics, "gone"),
        }
    }

    async fn changed(&mut self, link: &Link, tap: &mut impl FollowedTap, metrics: &Metrics) {
        let matches = self.patterns.as_ref().is_some_and(|p| p.matches(&link.name))
            && !self.statics.contains(&link.name);
        match self.followed.get_mut(&link.ifindex) {
            Some(f) if matches && f.name != link.name => {
                tracing::info!("{} (index {}) is now {}", f.name, link.ifindex, link.name);
                metrics.interface(&f.name, link.ifindex, f.pod.as_deref(), false);
                metrics.interface(&link.name, link.ifindex, f.pod.as_deref(), true);
                link.name.clone_into(&mut f.name);
            }
            Some(_) if matches => {}
            Some(_) => self.unfollow(link.ifindex, tap, metrics, "no longer matches"),
            None if !matches => {}
            // Attached already: taken over from an earlier agent's pin at start.
            None if tap.is_attached(link.ifindex) => {
                let pod = self.pod(link).await;
                metrics.interface(&link.name, link.ifindex, pod.as_deref(), true);
                self.followed.insert(link.ifindex, Followed { name: link.name.clone(), pod });
            }
            None => match tap.attach(link) {
                Ok(()) => {
                    let pod = self.pod(link).await;
                    let of = pod.as_deref().map(|p| format!(", pod {p}")).unwrap_or_default();
                    tracing::info!("attached to {} (index {}{of})", link.name, link.ifindex);
                    metrics.interface(&link.name, link.ifindex, pod.as_deref(), true);
                    self.followed.insert(link.ifindex, Followed { name: link.name.clone(), pod });
                }
                // Typically gone again already: its removal is on its way.
                Err(e) => {
                    tracing::warn!("attaching to {}: {e:#}", link.name);
                    metrics.interface_failed();
                }
            },
        }
    }

    /// The pod behind a veth: `namespace/name` from the container runtime, else the name of
    /// its peer's network namespace, if it has one.
    async fn pod(&mut self, link: &Link) -> Option<String> {
        let netns = link.peer_netns_id.and_then(|id| self.netns.name(id)).map(str::to_owned)?;
        let pod = match &mut self.cri {
            Some(cri) => cri.pod(&netns).await.unwrap_or(netns),
            None => netns,
        };
        self.pods.insert(link.ifindex, &pod);
        Some(pod)
    }

    fn unfollow(&mut self, ifindex: u32, tap: &mut impl FollowedTap, m: &Metrics, why: &str) {
        if let Some(f) = self.followed.remove(&ifindex) {
            tap.detach(ifindex);
            self.pods.remove(ifindex);
            tracing::info!("detached from {} (index {ifindex}): {why}", f.name);
            m.interface(&f.name, ifindex, f.pod.as_deref(), false);
        }
    }
}
