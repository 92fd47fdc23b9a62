//! Following pods on a node: interfaces whose names match the patterns (`veth*|cali*`) are
//! attached as they appear and detached as they go, told by rtnetlink
//! ([`mirror_tap::LinkWatcher`]). Interfaces are known by index, so a rename keeps the
//! attachment (unless the new name no longer matches) and a name taken over by a new
//! interface is a new interface. An interface attached already when first seen (given by
//! name, or taken over from an earlier agent's pins) is followed from then if it matches.
use std::collections::HashMap;

use mirror_tap::{InterfacePatterns, Link, LinkEvent, LinkWatcher, Tap};

use crate::metrics::Metrics;

/// Where the follower attaches and detaches: the tap, by interface index.
pub trait FollowedTap {
    fn attach(&mut self, link: &Link) -> anyhow::Result<()>;
    /// Detaches interface `ifindex` (also when it is already gone).
    fn detach(&mut self, ifindex: u32);
    /// Attached already (given by name, or taken over from a pin at start).
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
    /// Interfaces the follower attached, by index: their current names.
    followed: HashMap<u32, String>,
}

impl Follower {
    /// Starts watching (before the list of links is read: nothing created meanwhile is
    /// missed). Within a tokio runtime.
    pub fn start(patterns: InterfacePatterns) -> std::io::Result<Follower> {
        let patterns = Some(patterns);
        Ok(Follower { watcher: LinkWatcher::start()?, patterns, followed: HashMap::new() })
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

    /// The interfaces followed now: (index, name).
    pub fn followed(&self) -> impl Iterator<Item = (u32, &str)> {
        self.followed.iter().map(|(&i, n)| (i, n.as_str()))
    }

    /// Applies one change to `tap`.
    pub fn apply(&mut self, event: LinkEvent, tap: &mut impl FollowedTap, metrics: &Metrics) {
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
                    self.changed(link, tap, metrics);
                }
            }
            LinkEvent::Changed(link) => self.changed(&link, tap, metrics),
            LinkEvent::Gone(ifindex) => self.unfollow(ifindex, tap, metrics, "gone"),
        }
    }

    fn changed(&mut self, link: &Link, tap: &mut impl FollowedTap, metrics: &Metrics) {
        let matches = self.patterns.as_ref().is_some_and(|p| p.matches(&link.name));
        match self.followed.get_mut(&link.ifindex) {
            Some(name) if matches && *name != link.name => {
                tracing::info!("{name} (index {}) is now {}", link.ifindex, link.name);
                metrics.interface(name, link.ifindex, false);
                metrics.interface(&link.name, link.ifindex, true);
                link.name.clone_into(name);
            }
            Some(_) if matches => {}
            Some(_) => self.unfollow(link.ifindex, tap, metrics, "no longer matches"),
            None if !matches => {}
            // Attached already: taken over from a pin at start, or given by name.
            None if tap.is_attached(link.ifindex) => {
                self.followed.insert(link.ifindex, link.name.clone());
            }
            None => match tap.attach(link) {
                Ok(()) => {
                    tracing::info!("attached to {} (index {})", link.name, link.ifindex);
                    metrics.interface(&link.name, link.ifindex, true);
                    self.followed.insert(link.ifindex, link.name.clone());
                }
                // Typically gone again already: its removal is on its way.
                Err(e) => {
                    tracing::warn!("attaching to {}: {e:#}", link.name);
                    metrics.interface_failed();
                }
            },
        }
    }

    fn unfollow(&mut self, ifindex: u32, tap: &mut impl FollowedTap, m: &Metrics, why: &str) {
        if let Some(name) = self.followed.remove(&ifindex) {
            tap.detach(ifindex);
            tracing::info!("detached from {name} (index {ifindex}): {why}");
            m.interface(&name, ifindex, false);
        }
    }
}
