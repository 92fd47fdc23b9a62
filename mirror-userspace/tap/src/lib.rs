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
mod netlink;
mod netns;
mod pin;
mod ring;

use std::{fmt, net::IpAddr, os::fd::AsFd, path::PathBuf};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf},
    programs::SchedClassifier,
    Ebpf, EbpfLoader,
};
use ipnet::IpNet;
pub use mirror_common::MAX_RINGS;
use mirror_common::{
    CpuState, TapConfig, CAPTURE_REQUESTS, CAPTURE_RESPONSES, DEFAULT_RING_BYTES, MAP_CONFIG,
    MAP_COUNTERS, MAP_NETS_V4, MAP_NETS_V6, MAP_PORTS, MAP_RINGS, MAP_SKIPS,
};

pub use attach::AttachMode;
use attach::{Attachment, OwnQdiscs};
pub use iface::ifindex as interface_index;
pub use links::{InterfacePatterns, Link, LinkEvent, LinkWatcher};
pub use mirror_common::{Counter, Hook, PROG_EGRESS, PROG_INGRESS, PROG_XDP};
pub use netlink::route_interface;
pub use netns::{NetnsNames, NETNS_DIR};
use pin::PinDir;
pub use pin::{
    cleanup as cleanup_pins, hook_name, open_pinned, pinned_links, tcx_link_info, PinnedLinkEntry,
    TcxLinkInfo, DEFAULT_PIN_DIR,
};
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
    /// Interfaces followed by name (attached by the agent as they appear): with `pin_dir`,
    /// the pinned links of matching interfaces are taken over at start, like `interfaces`.
    pub follow: Option<InterfacePatterns>,
    /// Pin the links and maps here (TCX only), and take over what an earlier agent pinned
    /// there: a restart without a gap (see the `pin` module).
    pub pin_dir: Option<PathBuf>,
    /// Attach the XDP program instead of the tc ones: it sees only what arrives on an
    /// interface (requests to a service there, not its responses), before the stack does.
    pub xdp: bool,
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
            follow: None,
            pin_dir: None,
            xdp: false,
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
        if self.pin_dir.is_some() && self.attach_mode == AttachMode::Netlink {
            bail!("pin_dir: pinning needs TCX links; netlink filters cannot be pinned");
        }
        if self.pin_dir.is_some() && self.xdp {
            bail!("pin_dir: pinning is for TCX links; XDP attaches unpinned");
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
    /// The settings in force (see [`Tap::reconfigure`]).
    settings: TapSettings,
    attachments: Vec<Attachment>,
    qdiscs: OwnQdiscs,
    /// The pin directory, locked, when pinning.
    pins: Option<PinDir>,
    /// Leave everything pinned when dropped ([`Tap::keep_attached`]).
    keep: bool,
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
        let pins = match &settings.pin_dir {
            Some(dir) => Some(PinDir::lock(dir)?),
            None => None,
        };
        let maps_dir = match &pins {
            Some(p) => Some(p.maps_dir(TAP_OBJECT, settings.rings, settings.ring_bytes)?),
            None => None,
        };
        let mut loader = EbpfLoader::new();
        for (i, name) in MAP_RINGS.iter().enumerate() {
            // Rings not in use still exist (the program names all of them): one page each.
            let bytes = if i < settings.rings { settings.ring_bytes } else { page_size() };
            loader.map_max_entries(name, bytes);
        }
        if let Some(dir) = &maps_dir {
            // Taken over if pinned there already (what the rings hold is read on), else
            // created and pinned.
            for name in MAP_RINGS.iter().chain(&PINNED_MAPS) {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(TAP_OBJECT).context("loading the tap object")?;
        configure(&mut ebpf, settings)?;
        load_programs(&mut ebpf, settings.xdp)?;
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
            // XDP has one hook: what arrives.
            hooks: if settings.xdp { vec![Hook::Ingress] } else { settings.hooks.clone() },
            attach_mode: settings.attach_mode,
            settings: settings.clone(),
            attachments: Vec::new(),
            qdiscs: OwnQdiscs::new(),
            // Until started, a failure leaves what is pinned as it was found (an upgrade
            // that fails to start must not detach the agent it replaces).
            keep: pins.is_some(),
            pins,
        };
        if let Some(dir) = &maps_dir {
            tap.adopt_pinned(settings)?;
            if let Some(pins) = &tap.pins {
                pins.remove_other_maps(dir);
            }
        }
        for iface in &settings.interfaces {
            tap.attach_interface(iface)?;
        }
        Ok(tap)
    }

    /// Puts new settings in force without detaching anything that stays: the ports and
    /// networks rewritten in the maps in place, interfaces given by name attached or
    /// detached to match (following by pattern is the agent's, see [`LinkWatcher`]). The ring
    /// geometry, the hooks, the attach mode and the pin directory need a restart: a change to
    /// them is refused, naming the field, and nothing changes.
    pub fn reconfigure(&mut self, settings: &TapSettings) -> Result<()> {
        settings.validate()?;
        let old = &self.settings;
        let fixed = [
            ("ringBytes", old.ring_bytes != settings.ring_bytes),
            ("rings", old.rings != settings.rings),
            ("hooks", old.hooks != settings.hooks),
            ("attach", old.attach_mode != settings.attach_mode),
            ("pin", old.pin_dir != settings.pin_dir),
            ("xdp", old.xdp != settings.xdp),
        ];
        if let Some((field, _)) = fixed.iter().find(|(_, changed)| *changed) {
            bail!("{field}: cannot change while the agent runs (restart it)");
        }
        // New names not attached already (a followed interface named now stays as it is).
        let added: Vec<&String> = settings
            .interfaces
            .iter()
            .filter(|i| !old.interfaces.contains(i) && !self.is_attached(i))
            .collect();
        let removed: Vec<String> =
            old.interfaces.iter().filter(|i| !settings.interfaces.contains(i)).cloned().collect();
        for (n, iface) in added.iter().enumerate() {
            if let Err(e) = self.attach_interface(iface) {
                for undo in &added[..n] {
                    self.detach_interface(undo);
                }
                return Err(e);
            }
        }
        if let Err(e) = configure(&mut self.ebpf, settings) {
            for undo in &added {
                self.detach_interface(undo);
            }
            return Err(e);
        }
        for iface in &removed {
            self.detach_interface(iface);
        }
        self.settings = settings.clone();
        Ok(())
    }

    /// Takes over the links pinned by an earlier agent on the interfaces these settings
    /// want (their program swapped for ours in place); unpins the others (their interface
    /// is gone or no longer wanted), which detaches them.
    fn adopt_pinned(&mut self, settings: &TapSettings) -> Result<()> {
        let Some(pins) = &self.pins else { return Ok(()) };
        for entry in pins.links() {
            let name = iface::name(entry.ifindex);
            let wanted = name.as_deref().filter(|n| {
                settings.interfaces.iter().any(|i| i == n)
                    || settings.follow.as_ref().is_some_and(|f| f.matches(n))
            });
            match wanted {
                Some(name) if self.hooks.contains(&entry.hook) => {
                    let a = attach::attach_pinned(&mut self.ebpf, name, entry.hook, &entry.path)?;
                    self.attachments.push(a);
                }
                _ => {
                    tracing::info!("unpinning {}: not wanted any more", entry.path.display());
                    std::fs::remove_file(&entry.path)
                        .with_context(|| format!("unpinning {}", entry.path.display()))?;
                }
            }
        }
        Ok(())
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
            new.push(match &self.pins {
                _ if self.settings.xdp => attach::attach_xdp(&mut self.ebpf, iface)?,
                Some(pins) => {
                    let ifindex = iface::ifindex(iface).unwrap_or_default();
                    if self.attachments.iter().any(|a| a.ifindex == ifindex && a.hook == hook) {
                        continue; // taken over at start
                    }
                    let path = pins.link_path(ifindex, hook);
                    attach::attach_pinned(&mut self.ebpf, iface, hook, &path)?
                }
                None => {
                    attach::attach(&mut self.ebpf, iface, hook, self.attach_mode, &mut self.qdiscs)?
                }
            });
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

    /// Every attachment: where, how, whether it was taken over from an earlier agent, and
    /// the kernel's facts of its link (pinned links only).
    pub fn attachment_states(&self) -> Vec<AttachmentState> {
        let states = self.attachments.iter().map(|a| AttachmentState {
            iface: a.iface.clone(),
            ifindex: a.ifindex,
            hook: a.hook,
            mode: a.mode,
            adopted: a.adopted,
            link: a.link_info(),
        });
        states.collect()
    }

    /// Detaches everything now (dropping the tap does the same): links closed and unpinned,
    /// the pinned maps unpinned. A qdisc that cannot be deleted is logged: nothing more can
    /// be done about it here.
    pub fn detach(self) {
        drop(self);
    }

    /// The agent using this tap has started: from now on dropping it unpins (unless
    /// [`Tap::keep_attached`]).
    pub fn started(&mut self) {
        self.keep = false;
    }

    /// Closes everything but leaves the links and maps pinned, the programs attached and
    /// capturing into the rings, for the next agent to take over (an upgrade). Without a pin
    /// directory this is [`Tap::detach`].
    pub fn keep_attached(mut self) {
        self.keep = self.pins.is_some();
    }
}

/// The TCX programs on `hook` of interface `iface`, in the order they run: (id, name).
/// Ours are named [`PROG_INGRESS`] and [`PROG_EGRESS`].
pub fn hook_programs(iface: &str, hook: Hook) -> Result<Vec<(u32, String)>> {
    let attach_type = match hook {
        Hook::Ingress => aya::programs::TcAttachType::Ingress,
        Hook::Egress => aya::programs::TcAttachType::Egress,
    };
    let (_, programs) = SchedClassifier::query_tcx(iface, attach_type)
        .with_context(|| format!("querying the TCX programs of {iface} {hook:?}"))?;
    let named = programs.iter().map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_owned()));
    Ok(named.collect())
}

/// The name of interface `ifindex`, if it exists.
pub fn interface_name(ifindex: u32) -> Option<String> {
    iface::name(ifindex)
}

/// One attachment, as [`Tap::attachment_states`] describes it.
#[derive(Clone, Debug)]
pub struct AttachmentState {
    pub iface: String,
    pub ifindex: u32,
    pub hook: Hook,
    pub mode: AttachMode,
    /// Taken over from an earlier agent's pin.
    pub adopted: bool,
    pub link: Option<TcxLinkInfo>,
}

/// The maps pinned besides the rings (all but the object's own data sections).
const PINNED_MAPS: [&str; 6] =
    [MAP_CONFIG, MAP_PORTS, MAP_NETS_V4, MAP_NETS_V6, MAP_COUNTERS, MAP_SKIPS];

impl Drop for Tap {
    fn drop(&mut self) {
        // Every link (unpinned unless kept), then (with the last attachment on each
        // interface) the qdiscs we added; the programs and maps go with `ebpf` afterwards.
        if self.keep {
            for a in &mut self.attachments {
                a.keep_pinned();
            }
        }
        self.attachments.clear();
        if let Some(pins) = self.pins.take() {
            if !self.keep {
                if let Err(e) = pins.remove_all() {
                    tracing::warn!("{e:#}");
                }
            }
        }
    }
}

/// Loads (verifies) the programs the tap attaches: the XDP one, or the two classifiers.
fn load_programs(ebpf: &mut Ebpf, xdp: bool) -> Result<()> {
    if xdp {
        let prog: &mut aya::programs::Xdp =
            ebpf.program_mut(PROG_XDP).context("program missing from the object")?.try_into()?;
        return prog.load().with_context(|| format!("loading program {PROG_XDP}"));
    }
    for name in [PROG_INGRESS, PROG_EGRESS] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading program {name}"))?;
    }
    Ok(())
}

/// Puts the settings into the maps, replacing whatever they held (pinned maps taken over
/// from an earlier agent hold its settings).
fn configure(ebpf: &mut Ebpf, settings: &TapSettings) -> Result<()> {
    let mut ports: Array<_, u8> = ebpf.map_mut(MAP_PORTS).context("ports map")?.try_into()?;
    for port in 0..=u16::MAX {
        let want = u8::from(settings.ports.contains(&port));
        // New maps are all zeroes: only pinned ones from an earlier run take writes here.
        if ports.get(&u32::from(port), 0)? != want {
            ports.set(u32::from(port), want, 0)?;
        }
    }
    let v4: Vec<Key<[u8; 4]>> = settings
        .service_nets
        .iter()
        .filter_map(|net| match (net, net.network()) {
            (IpNet::V4(n), IpAddr::V4(a)) => Some(Key::new(n.prefix_len() as u32, a.octets())),
            _ => None,
        })
        .collect();
    replace_nets(ebpf, MAP_NETS_V4, &v4)?;
    let v6: Vec<Key<[u8; 16]>> = settings
        .service_nets
        .iter()
        .filter_map(|net| match (net, net.network()) {
            (IpNet::V6(n), IpAddr::V6(a)) => Some(Key::new(n.prefix_len() as u32, a.octets())),
            _ => None,
        })
        .collect();
    replace_nets(ebpf, MAP_NETS_V6, &v6)?;
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

/// Makes the LPM trie `name` hold exactly `keys`.
fn replace_nets<const N: usize>(ebpf: &mut Ebpf, name: &str, keys: &[Key<[u8; N]>]) -> Result<()>
where
    [u8; N]: aya::Pod,
{
    let mut trie: LpmTrie<_, [u8; N], u8> =
        ebpf.map_mut(name).with_context(|| format!("{name} map"))?.try_into()?;
    let old: Vec<Key<[u8; N]>> = trie.keys().collect::<Result<_, _>>()?;
    let same = |a: &Key<[u8; N]>, b: &Key<[u8; N]>| {
        a.prefix_len() == b.prefix_len() && a.data() == b.data()
    };
    for key in old.iter().filter(|k| !keys.iter().any(|w| same(w, k))) {
        trie.remove(key)?;
    }
    for key in keys {
        trie.insert(key, 1, 0)?;
    }
    Ok(())
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u32 }
}
