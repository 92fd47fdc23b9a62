//! The loader of the kernel tap: loads the embedded object, fills the selection maps,
//! attaches to interfaces and hands out the captured segments and the kernel counters.
//!
//! Everything the loader creates is undone when the [`Tap`] is dropped (or an interface is
//! detached): TCX links close with their fds, netlink filters are removed, and a clsact
//! qdisc is deleted if we added it.
mod attach;
mod clsact;
mod iface;
mod links;
mod ring;

use std::{fmt, net::IpAddr, os::fd::AsFd};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf},
    programs::SchedClassifier,
    Ebpf, EbpfLoader,
};
use ipnet::IpNet;
pub use mirror_common::MAX_RINGS;
use mirror_common::{
    CpuState, Hook, TapConfig, CAPTURE_REQUESTS, CAPTURE_RESPONSES, DEFAULT_RING_BYTES, MAP_CONFIG,
    MAP_COUNTERS, MAP_NETS_V4, MAP_NETS_V6, MAP_PORTS, MAP_RINGS, MAP_SKIPS, PROG_EGRESS,
    PROG_INGRESS,
};

pub use attach::AttachMode;
use attach::{Attachment, OwnQdiscs};
pub use iface::ifindex as interface_index;
pub use links::{InterfacePatterns, Link, LinkEvent, LinkWatcher};
pub use mirror_common::Counter;
use ring::SkipMap;
pub use ring::{RingReader, RingSource};

/// The kernel object built from `mirror-ebpf` by this crate's build script; empty when the
/// build had no BPF toolchain (see build.rs), and then [`Tap::attach`] refuses to run.
static TAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror-tap.o"));

/// Which directions of a service's traffic to capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Directions {
    /// Segments toward a service port.
    pub requests: bool,
    /// Segments from a service port (needed to pair responses, later to diff them).
    pub responses: bool,
}

impl Directions {
    pub const BOTH: Directions = Directions { requests: true, responses: true };
    pub const REQUESTS: Directions = Directions { requests: true, responses: false };

    fn bits(self) -> u32 {
        (if self.requests { CAPTURE_REQUESTS } else { 0 })
            | (if self.responses { CAPTURE_RESPONSES } else { 0 })
    }
}

/// What to capture and where.
#[derive(Clone, Debug)]
pub struct TapSettings {
    /// Interfaces to attach to (for a pod: the host side of its veth); more can be attached
    /// later ([`Tap::attach_interface`]), so none is valid here.
    pub interfaces: Vec<String>,
    /// Hooks to attach on each interface; both by default, since requests and responses
    /// cross an interface in opposite directions.
    pub hooks: Vec<Hook>,
    /// Service ports.
    pub ports: Vec<u16>,
    /// If non-empty, the service side of a segment must also lie in one of these networks.
    pub service_nets: Vec<IpNet>,
    pub directions: Directions,
    /// Size of each ring buffer in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    /// Ring buffers, 1..=[`MAX_RINGS`]: one per reader (agent worker). A connection's
    /// segments, both directions, all go to one ring.
    pub rings: usize,
    pub attach_mode: AttachMode,
    /// Packets with this mark are ignored (0: none). The agent marks its own sockets.
    pub ignore_mark: u32,
    /// Bytes waiting in the ring before the kernel wakes the reader (0: every record).
    /// Between wakeups the reader polls every [`RingSource::POLL_INTERVAL`], backing off to
    /// [`RingSource::MAX_POLL_INTERVAL`] while the ring stays empty.
    pub wake_bytes: u32,
    /// Leave out the bytes the readers' consumers say they will not read (the rest of a
    /// response body nothing keeps): [`mirror_capture::CaptureSource::leave_out`]. Off for
    /// views that show every byte (`mirror dump`).
    pub leave_out: bool,
}

impl Default for TapSettings {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            hooks: vec![Hook::Ingress, Hook::Egress],
            ports: Vec::new(),
            service_nets: Vec::new(),
            directions: Directions::BOTH,
            ring_bytes: DEFAULT_RING_BYTES,
            rings: 1,
            attach_mode: AttachMode::Auto,
            ignore_mark: 0,
            wake_bytes: mirror_common::DEFAULT_WAKE_BYTES,
            leave_out: false,
        }
    }
}

impl TapSettings {
    /// Checks the settings before anything touches the kernel; errors name the field.
    pub fn validate(&self) -> Result<()> {
        for name in &self.interfaces {
            if iface::ifindex(name).is_none() {
                bail!("interfaces: no such interface {name:?}");
            }
        }
        if self.hooks.is_empty() {
            bail!("hooks: at least one of ingress or egress is required");
        }
        if self.ports.is_empty() {
            bail!("ports: at least one service port is required");
        }
        if self.ports.contains(&0) {
            bail!("ports: 0 is not a valid service port");
        }
        if !self.directions.requests && !self.directions.responses {
            bail!("directions: capture requests, responses or both");
        }
        if !(1..=MAX_RINGS).contains(&self.rings) {
            bail!("rings: {} is not between 1 and {MAX_RINGS}", self.rings);
        }
        let page = page_size();
        if !self.ring_bytes.is_power_of_two() || self.ring_bytes < page {
            bail!(
                "ring_bytes: {} is not a power of two of at least one page ({page})",
                self.ring_bytes
            );
        }
        Ok(())
    }
}

/// Sums of the per-CPU counters of the kernel program, indexed by [`Counter`] (defined once,
/// in mirror-common, for both sides).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters([u64; Counter::COUNT as usize]);

impl KernelCounters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    /// (name, value) of every counter, in [`Counter::ALL`] order.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.iter().map(|&c| (c.name(), self.get(c)))
    }
}

impl fmt::Display for KernelCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.fields().enumerate() {
            write!(f, "{}{name} {value}", if i == 0 { "" } else { " " })?;
        }
        Ok(())
    }
}

/// A loaded and attached tap. Interfaces can be attached and detached while it runs; each
/// (interface, hook) is one [`Attachment`](attach::Attachment) that detaches when dropped.
pub struct Tap {
    ebpf: Ebpf,
    /// The rings in use, until their readers are taken.
    rings: Vec<RingBuf<MapData>>,
    /// The map of ranges to leave out, if [`TapSettings::leave_out`]: each reader gets a
    /// handle of its own.
    skips: Option<Map>,
    hooks: Vec<Hook>,
    attach_mode: AttachMode,
    attachments: Vec<Attachment>,
    qdiscs: OwnQdiscs,
}

impl Tap {
    /// Validates the settings, loads the program, fills its maps and attaches it to every
    /// interface of the settings. On error everything attached so far is detached again.
    pub fn attach(settings: &TapSettings) -> Result<Tap> {
        settings.validate()?;
        if TAP_OBJECT.is_empty() {
            bail!(
                "this build has no kernel program: it was built without Debian's rustc-web and \
                 bpf-linker (run `cargo xtask setup`, then rebuild)"
            );
        }
        let mut loader = EbpfLoader::new();
        for (i, name) in MAP_RINGS.iter().enumerate() {
            // Rings not in use still exist (the program names all of them): one page each.
            let bytes = if i < settings.rings { settings.ring_bytes } else { page_size() };
            loader.map_max_entries(name, bytes);
        }
        let mut ebpf = loader.load(TAP_OBJECT).context("loading the tap object")?;
        configure(&mut ebpf, settings)?;
        for name in [PROG_INGRESS, PROG_EGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().with_context(|| format!("loading program {name}"))?;
        }
        let mut rings = Vec::new();
        for name in &MAP_RINGS[..settings.rings] {
            let map = ebpf.take_map(name).with_context(|| format!("ring map {name} missing"))?;
            rings.push(RingBuf::try_from(map)?);
        }
        let skips = match settings.leave_out {
            true => Some(ebpf.take_map(MAP_SKIPS).context("skip map missing")?),
            false => None,
        };
        let mut tap = Tap {
            ebpf,
            rings,
            skips,
            hooks: settings.hooks.clone(),
            attach_mode: settings.attach_mode,
            attachments: Vec::new(),
            qdiscs: OwnQdiscs::new(),
        };
        for iface in &settings.interfaces {
            tap.attach_interface(iface)?;
        }
        Ok(tap)
    }

    /// Attaches to the hooks of one more interface (all of them or none). Asked twice for one
    /// interface it attaches twice (TCX refuses the same program twice on a hook; in auto mode
    /// the second attachment is then made through clsact).
    pub fn attach_interface(&mut self, iface: &str) -> Result<()> {
        if iface::ifindex(iface).is_none() {
            bail!("interfaces: no such interface {iface:?}");
        }
        let mut new = Vec::new();
        for &hook in &self.hooks {
            // On error `new` drops: the hooks attached so far are detached again.
            new.push(attach::attach(
                &mut self.ebpf,
                iface,
                hook,
                self.attach_mode,
                &mut self.qdiscs,
            )?);
        }
        self.attachments.extend(new);
        Ok(())
    }

    /// Whether `iface` is attached (on any hook).
    pub fn is_attached(&self, iface: &str) -> bool {
        self.attachments.iter().any(|a| a.iface == iface)
    }

    /// Whether the interface with this index is attached (on any hook).
    pub fn is_attached_index(&self, ifindex: u32) -> bool {
        self.attachments.iter().any(|a| a.ifindex == ifindex)
    }

    /// Detaches from every hook of the interface with this index (also when it is gone and
    /// the kernel detached already: this closes our links); false if it was not attached.
    pub fn detach_index(&mut self, ifindex: u32) -> bool {
        let before = self.attachments.len();
        self.attachments.retain(|a| a.ifindex != ifindex);
        self.attachments.len() != before
    }

    /// Detaches from every hook of `iface`; false if it was not attached.
    pub fn detach_interface(&mut self, iface: &str) -> bool {
        let before = self.attachments.len();
        self.attachments.retain(|a| a.iface != iface);
        self.attachments.len() != before
    }

    /// Where each program is attached (interface name and index) and how.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, u32, Hook, AttachMode)> {
        self.attachments.iter().map(|a| (a.iface.as_str(), a.ifindex, a.hook, a.mode))
    }

    /// Takes the segment stream of a tap with one ring. Must be called from within a tokio
    /// runtime; only once.
    pub fn segments(&mut self) -> Result<RingSource> {
        if self.rings.len() > 1 {
            bail!("this tap has {} rings: take them with ring_buffers", self.rings.len());
        }
        let ring = self.rings.pop().context("the segment stream was already taken")?;
        RingSource::new(ring, self.skip_map()?)
    }

    /// Takes every ring, for one reader each ([`RingReader::into_source`] within the
    /// reader's tokio runtime); only once.
    pub fn ring_buffers(&mut self) -> Result<Vec<RingReader>> {
        if self.rings.is_empty() {
            bail!("the rings were already taken");
        }
        let rings = std::mem::take(&mut self.rings);
        rings.into_iter().map(|ring| Ok(RingReader { ring, skips: self.skip_map()? })).collect()
    }

    /// A handle of its own on the skip map, if ranges are left out.
    fn skip_map(&self) -> Result<Option<SkipMap>> {
        let Some(map) = &self.skips else { return Ok(None) };
        let data = match map {
            Map::LruHashMap(data) => data,
            _ => bail!("{MAP_SKIPS} is not an LRU hash map"),
        };
        let fd = data.fd().as_fd().try_clone_to_owned().context("duplicating the skip map")?;
        let own = Map::LruHashMap(MapData::from_fd(fd)?);
        Ok(Some(SkipMap::new(HashMap::try_from(own)?)))
    }

    /// Reads the kernel counters, summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters> {
        let map = self.ebpf.map(MAP_COUNTERS).context("counter map missing")?;
        let array = PerCpuArray::<_, CpuState>::try_from(map)?;
        let per_cpu = array.get(&0, 0)?;
        let mut out = KernelCounters::default();
        for cpu in per_cpu.iter() {
            for (sum, value) in out.0.iter_mut().zip(cpu.counters) {
                *sum += value;
            }
        }
        Ok(out)
    }

    /// Detaches everything now (dropping the tap does the same). A qdisc that cannot be
    /// deleted is logged: nothing more can be done about it here.
    pub fn detach(self) {
        drop(self);
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // Every link, then (with the last attachment on each interface) the qdiscs we added;
        // the programs and maps go with `ebpf` afterwards.
        self.attachments.clear();
    }
}

fn configure(ebpf: &mut Ebpf, settings: &TapSettings) -> Result<()> {
    let mut ports: Array<_, u8> = ebpf.map_mut(MAP_PORTS).context("ports map")?.try_into()?;
    for &port in &settings.ports {
        ports.set(port as u32, 1, 0)?;
    }
    let mut v4: LpmTrie<_, [u8; 4], u8> =
        ebpf.map_mut(MAP_NETS_V4).context("v4 nets map")?.try_into()?;
    for net in &settings.service_nets {
        if let (IpNet::V4(n), IpAddr::V4(a)) = (net, net.network()) {
            v4.insert(&Key::new(n.prefix_len() as u32, a.octets()), 1, 0)?;
        }
    }
    let mut v6: LpmTrie<_, [u8; 16], u8> =
        ebpf.map_mut(MAP_NETS_V6).context("v6 nets map")?.try_into()?;
    for net in &settings.service_nets {
        if let (IpNet::V6(n), IpAddr::V6(a)) = (net, net.network()) {
            v6.insert(&Key::new(n.prefix_len() as u32, a.octets()), 1, 0)?;
        }
    }
    let cfg = TapConfig {
        capture: settings.directions.bits(),
        restrict_addrs: u32::from(!settings.service_nets.is_empty()),
        ignore_mark: settings.ignore_mark,
        wake_bytes: settings.wake_bytes,
        rings: settings.rings as u32,
        elide: u32::from(settings.leave_out),
    };
    let mut config: Array<_, TapConfig> =
        ebpf.map_mut(MAP_CONFIG).context("config map")?.try_into()?;
    config.set(0, cfg, 0)?;
    Ok(())
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u32 }
}
