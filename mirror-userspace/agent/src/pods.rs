//! Which pod a server address belongs to, for the watch stream: the interface the node
//! routes the address through (`ip route get`, asked once per address and remembered), and
//! the pod the follower found behind that interface. Looked up only while someone watches.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, RwLock},
};

/// Addresses remembered at most; the memory starts over beyond (pods come and go anyway).
const MAX_ADDRESSES: usize = 4096;

/// Shared by the follower (which names interfaces) and the watch publishers (which ask).
#[derive(Clone, Default)]
pub struct Pods(Arc<Inner>);

#[derive(Default)]
struct Inner {
    by_ifindex: RwLock<HashMap<u32, String>>,
    route_of: Mutex<HashMap<IpAddr, Option<u32>>>,
}

impl Pods {
    /// Interface `ifindex` leads to `pod`.
    pub fn insert(&self, ifindex: u32, pod: &str) {
        self.0.by_ifindex.write().expect("not poisoned").insert(ifindex, pod.to_owned());
        // Routes change with pods: what was remembered may lead elsewhere now.
        self.0.route_of.lock().expect("not poisoned").clear();
    }

    pub fn remove(&self, ifindex: u32) {
        self.0.by_ifindex.write().expect("not poisoned").remove(&ifindex);
        self.0.route_of.lock().expect("not poisoned").clear();
    }

    /// The pod `addr` belongs to, if the node routes it through a followed pod's interface.
    pub fn of(&self, addr: IpAddr) -> Option<String> {
        let remembered = self.0.route_of.lock().expect("not poisoned").get(&addr).copied();
        let ifindex = match remembered {
            Some(ifindex) => ifindex,
            None => {
                let ifindex = mirror_tap::route_interface(addr)
                    .inspect_err(|e| tracing::debug!("route to {addr}: {e}"))
                    .ok()
                    .flatten();
                let mut routes = self.0.route_of.lock().expect("not poisoned");
                if routes.len() >= MAX_ADDRESSES {
                    routes.clear();
                }
                routes.insert(addr, ifindex);
                ifindex
            }
        };
        self.0.by_ifindex.read().expect("not poisoned").get(&ifindex?).cloned()
    }
}
