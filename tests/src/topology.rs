//! The shape of a Kubernetes node: a client namespace and a server namespace, each joined to
//! the root namespace (the node) by a veth pair, with the node routing between them. The tap
//! goes on the node side of the server's veth, like the host side of a pod's veth.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Result;

use crate::netns::{run, Netns};

/// IP family of a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

pub struct Topology {
    pub id: u32,
    pub client: Netns,
    pub server: Netns,
    /// A third namespace for a shadow service, routed like the others.
    pub shadow: Netns,
    /// Node-side veth of the client.
    pub client_host_if: String,
    /// Node-side veth of the server: where the tap attaches.
    pub server_host_if: String,
    pub shadow_host_if: String,
    client_v4: Ipv4Addr,
    server_v4: Ipv4Addr,
    client_v6: Ipv6Addr,
    server_v6: Ipv6Addr,
    shadow_v4: Ipv4Addr,
    shadow_v6: Ipv6Addr,
}

impl Topology {
    /// Builds a fresh topology with names and subnets no other test uses.
    pub fn new() -> Result<Topology> {
        crate::require_root();
        enable_forwarding()?;
        let mut last_err = None;
        for _ in 0..32 {
            match Self::try_build(next_id()) {
                Ok(t) => return Ok(t),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("tried at least once"))
    }

    pub fn client_addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.client_v4.into(),
            Family::V6 => self.client_v6.into(),
        }
    }

    pub fn shadow_addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.shadow_v4.into(),
            Family::V6 => self.shadow_v6.into(),
        }
    }

    pub fn server_addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.server_v4.into(),
            Family::V6 => self.server_v6.into(),
        }
    }

    fn try_build(id: u32) -> Result<Topology> {
        // 172.16.0.0/12 gives each id sixteen addresses: up to four /30 links.
        let base = u32::from(Ipv4Addr::new(172, 16, 0, 0)) + id * 16;
        let v4 = |n: u32| Ipv4Addr::from(base + n);
        let v6 = |link: u16, host: u16| Ipv6Addr::new(0xfd6d, 0, id as u16, link, 0, 0, 0, host);
        let client = Netns::create(&format!("mirror-c-{id:05x}"))?;
        let server = Netns::create(&format!("mirror-s-{id:05x}"))?;
        let shadow = Netns::create(&format!("mirror-w-{id:05x}"))?;
        let t = Topology {
            id,
            client,
            server,
            shadow,
            client_host_if: format!("mrc{id:05x}"),
            server_host_if: format!("mrs{id:05x}"),
            shadow_host_if: format!("mrw{id:05x}"),
            client_v4: v4(2),
            server_v4: v4(6),
            client_v6: v6(1, 2),
            server_v6: v6(2, 2),
            shadow_v4: v4(10),
            shadow_v6: v6(3, 2),
        };
        t.link(&t.client, &t.client_host_if, (v4(1), v4(2)), (v6(1, 1), v6(1, 2)))?;
        t.link(&t.server, &t.server_host_if, (v4(5), v4(6)), (v6(2, 1), v6(2, 2)))?;
        t.link(&t.shadow, &t.shadow_host_if, (v4(9), v4(10)), (v6(3, 1), v6(3, 2)))?;
        Ok(t)
    }

    /// Creates `host_if` in the root namespace with its peer `eth0` inside `ns`, addresses
    /// (host side first) and the namespace's default routes via the host side.
    fn link(
        &self,
        ns: &Netns,
        host_if: &str,
        (host4, ns4): (Ipv4Addr, Ipv4Addr),
        (host6, ns6): (Ipv6Addr, Ipv6Addr),
    ) -> Result<()> {
        let ip = |args: &[&str]| run(Command::new("ip").args(args)).map(drop);
        ip(&["link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])?;
        ip(&["addr", "add", &format!("{host4}/30"), "dev", host_if])?;
        ip(&["-6", "addr", "add", &format!("{host6}/64"), "dev", host_if, "nodad"])?;
        ip(&["link", "set", host_if, "up"])?;
        ns.ip(&["addr", "add", &format!("{ns4}/30"), "dev", "eth0"])?;
        ns.ip(&["-6", "addr", "add", &format!("{ns6}/64"), "dev", "eth0", "nodad"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &host4.to_string()])?;
        ns.ip(&["-6", "route", "add", "default", "via", &host6.to_string()])?;
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting the namespaces removes their veth ends and with them the node sides;
        // delete those explicitly too in case a namespace could not be removed.
        for host_if in [&self.client_host_if, &self.server_host_if, &self.shadow_host_if] {
            let _ = Command::new("ip").args(["link", "del", host_if]).output();
        }
    }
}

/// A pod on the node: a namespace joined to the root namespace by a veth whose node side has
/// a chosen name (what an agent following `veth*` or `cali*` sees). IPv4 only; deleted with
/// its namespace on drop (the veth goes with it).
pub struct Pod {
    pub ns: Netns,
    pub host_if: String,
    pub addr: Ipv4Addr,
    /// When the node side of the veth existed (before its addresses and routes).
    pub appeared: std::time::Instant,
}

impl Pod {
    /// Creates the pod; its veth's node side is called `host_if`.
    pub fn new(host_if: &str) -> Result<Pod> {
        crate::require_root();
        enable_forwarding()?;
        let mut last_err = None;
        for _ in 0..32 {
            match Self::try_build(next_id(), host_if) {
                Ok(pod) => return Ok(pod),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("tried at least once"))
    }

    fn try_build(id: u32, host_if: &str) -> Result<Pod> {
        // 10.200.0.0/14, apart from the topologies' addresses: a /30 per id.
        let base = u32::from(Ipv4Addr::new(10, 200, 0, 0)) + id * 4;
        let (host4, pod4) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let ns = Netns::create(&format!("mirror-p-{id:05x}"))?;
        let ip = |args: &[&str]| run(Command::new("ip").args(args)).map(drop);
        ip(&["link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])?;
        let appeared = std::time::Instant::now();
        ip(&["addr", "add", &format!("{host4}/30"), "dev", host_if])?;
        ip(&["link", "set", host_if, "up"])?;
        ns.ip(&["addr", "add", &format!("{pod4}/30"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &host4.to_string()])?;
        Ok(Pod { ns, host_if: host_if.to_owned(), addr: pod4, appeared })
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
    }
}

/// Ids unique across test processes running at once: the pid spreads processes apart, a
/// counter separates tests within one; a collision makes `ip netns add` fail and we retry.
fn next_id() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (std::process::id().wrapping_mul(2654435761).wrapping_add(n.wrapping_mul(40503))) % 0x10000
}

fn enable_forwarding() -> Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    Ok(())
}
