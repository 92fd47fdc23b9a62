//! The tap: a tc classifier that copies the TCP segments of selected services into BPF ring
//! buffers, one per agent worker, a connection's segments (both directions) always into the
//! same one.
//!
//! Invariant above all others: the program never changes the fate of a packet. Every path
//! returns `TC_ACT_UNSPEC`, which is `TCX_NEXT` under TCX and "no verdict, continue" under
//! cls_bpf direct-action, so the packet goes on exactly as if we were not attached and any
//! program after us (Cilium, Calico) still gets to decide. Nothing here writes to the skb.
//!
//! The same parsing and copying also runs as an XDP program (`mirror_xdp`, for services on
//! the host network): it sees only what arrives on an interface, before any skb exists, and
//! always returns `XDP_PASS`. Both reach the packet through [`Packet`].
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key, Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use mirror_common::{
    tcp_flags, Counter, CpuState, Direction, Hook, Record, SegmentHeader, SkipKey, SkipRange,
    TapConfig, CAPTURE_REQUESTS, CAPTURE_RESPONSES, DEFAULT_RING_BYTES, LARGE_CHUNK, MAX_CHUNKS,
    MAX_RINGS, MAX_SKIPS, MEDIUM_CHUNK, SMALL_CHUNK,
};
use network_types::{
    eth::EthHdr,
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

/// Verdict for every packet: no opinion, let the stack (or the next program) decide.
const PASS: i32 = TC_ACT_UNSPEC;

use mirror_common::parse::{
    is_skipped_ipv6_ext, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, MAX_IPV6_EXT,
};

// One ring per worker (mirror_common::MAP_RINGS). aya-ebpf has no array of maps, so the
// rings are eight maps and `ring` picks one; userspace shrinks the unused ones to a page.
#[map(name = "SEGMENTS_0")]
static SEGMENTS_0: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map(name = "SEGMENTS_1")]
static SEGMENTS_1: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map(name = "SEGMENTS_2")]
static SEGMENTS_2: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map(name = "SEGMENTS_3")]
static SEGMENTS_3: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map(name = "SEGMENTS_4")]
static SEGMENTS_4: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map(name = "SEGMENTS_5")]
static SEGMENTS_5: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map(name = "SEGMENTS_6")]
static SEGMENTS_6: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map(name = "SEGMENTS_7")]
static SEGMENTS_7: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Ring `R`, known at compile time. The ring is chosen once per packet, by instantiating
/// the whole copy path per ring (see `tap`): a map pointer chosen at run time right before
/// each reserve made the verifier explore every ring on every chunk of the copy loop, past
/// its limit of a million instructions.
#[inline(always)]
fn ring<const R: u32>() -> &'static RingBuf {
    match R {
        1 => &SEGMENTS_1,
        2 => &SEGMENTS_2,
        3 => &SEGMENTS_3,
        4 => &SEGMENTS_4,
        5 => &SEGMENTS_5,
        6 => &SEGMENTS_6,
        7 => &SEGMENTS_7,
        _ => &SEGMENTS_0,
    }
}

/// The ring of a segment's connection: a hash of its addresses and ports that both
/// directions share (xor is symmetric), spread by a multiplication (Fibonacci hashing) and
/// mapped onto `0..rings` by multiply-shift rather than a division.
#[inline(always)]
fn ring_of(h: &SegmentHeader, rings: u32) -> u32 {
    if rings <= 1 {
        return 0;
    }
    let mut x = (h.sport ^ h.dport) as u32;
    let mut i = 0;
    while i < 16 {
        let s = u32::from_ne_bytes([h.saddr[i], h.saddr[i + 1], h.saddr[i + 2], h.saddr[i + 3]]);
        let d = u32::from_ne_bytes([h.daddr[i], h.daddr[i + 1], h.daddr[i + 2], h.daddr[i + 3]]);
        x ^= s ^ d;
        i += 4;
    }
    let spread = x.wrapping_mul(0x9e37_79b1) as u64;
    ((spread * rings as u64) >> 32) as u32 & (MAX_RINGS as u32 - 1)
}

#[map(name = "TAP_CONFIG")]
static TAP_CONFIG: Array<TapConfig> = Array::with_max_entries(1, 0);

#[map(name = "SERVICE_PORTS")]
static SERVICE_PORTS: Array<u8> = Array::with_max_entries(65536, 0);

#[map(name = "SERVICE_NETS_V4")]
static SERVICE_NETS_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(1024, 0);

#[map(name = "SERVICE_NETS_V6")]
static SERVICE_NETS_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(1024, 0);

#[map(name = "SKIPS")]
static SKIPS: LruHashMap<SkipKey, SkipRange> = LruHashMap::with_max_entries(MAX_SKIPS, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

#[classifier]
pub fn mirror_ingress(ctx: TcContext) -> i32 {
    tap(&ctx, Hook::Ingress);
    PASS
}

#[classifier]
pub fn mirror_egress(ctx: TcContext) -> i32 {
    tap(&ctx, Hook::Egress);
    PASS
}

/// The XDP form: requests arriving on an interface, copied before the stack sees them.
#[xdp]
pub fn mirror_xdp(ctx: XdpContext) -> u32 {
    tap(&ctx, Hook::Ingress);
    xdp_action::XDP_PASS
}

/// What the parser and the copy need of a packet, from tc's skb or XDP's frame.
trait Packet {
    /// The linear data: direct reads are bounds-checked against these (the verifier's rule).
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The packet's whole length (paged data and XDP fragments included).
    fn total_len(&self) -> u32;
    fn ifindex(&self) -> u32;
    /// The socket mark (0 where there is none: XDP runs before any socket).
    fn mark(&self) -> u32;
    /// Copies `len` bytes at `offset` to `to` with the helper that also reads paged data;
    /// 0 on success.
    ///
    /// # Safety
    /// `to` must be valid for `len` bytes of writes.
    unsafe fn load_bytes(&self, offset: u32, to: *mut core::ffi::c_void, len: u32) -> i64;
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn total_len(&self) -> u32 {
        self.len()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: `self.skb.skb` is the program's own __sk_buff context, valid for the whole
        // run; reading a field is a context access the verifier checks and rewrites.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn mark(&self) -> u32 {
        // SAFETY: as in `ifindex`.
        unsafe { (*self.skb.skb).mark }
    }

    #[inline(always)]
    unsafe fn load_bytes(&self, offset: u32, to: *mut core::ffi::c_void, len: u32) -> i64 {
        // SAFETY: the caller's `to`; the helper checks offset and length against the skb.
        unsafe { bpf_skb_load_bytes(self.skb.skb as *const _, offset, to, len) }
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn total_len(&self) -> u32 {
        // The linear part only: the program is loaded without XDP fragments support, so a
        // frame is all linear (a multi-buffer frame never reaches it).
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }

    #[inline(always)]
    fn mark(&self) -> u32 {
        0
    }

    #[inline(always)]
    unsafe fn load_bytes(&self, offset: u32, to: *mut core::ffi::c_void, len: u32) -> i64 {
        // SAFETY: the caller's `to`; the helper checks offset and length against the frame.
        unsafe { bpf_xdp_load_bytes(self.ctx, offset, to, len) }
    }
}

/// This CPU's counters and wake-up accounting, looked up once per packet (one map lookup,
/// not one per counter).
struct Counters(*mut CpuState);

impl Counters {
    #[inline(always)]
    fn get() -> Option<Counters> {
        COUNTERS.get_ptr_mut(0).map(Counters)
    }

    #[inline(always)]
    fn add(&self, counter: Counter, n: u64) {
        // SAFETY: a valid per-CPU slot, and tc programs do not nest on one CPU: a plain add
        // is race free. The index is a constant below Counter::COUNT.
        unsafe { (*self.0).counters[counter as usize] += n };
    }

    /// Whether this submit wakes the reader. A wakeup (irq_work, then an epoll wakeup of
    /// the agent) costs more than everything else the program does for a packet, so
    /// records are submitted silently and each CPU wakes the reader once per `wake_bytes` it
    /// submitted; the agent also polls the ring on a short timer, which bounds the delay of
    /// a quiet trickle. Counting per CPU, rather than asking the ring how much waits, keeps
    /// the program off the consumer's position: that cache line is written by the agent on
    /// another CPU, and reading it on every record was a cache miss under load.
    #[inline(always)]
    fn wakeup_flags(&self, wake_bytes: u32, ring: u32, record_bytes: u64) -> u64 {
        if wake_bytes == 0 {
            return BPF_RB_FORCE_WAKEUP as u64;
        }
        // SAFETY: as in `add`; the mask keeps the index below MAX_RINGS for the verifier.
        let unwoken =
            unsafe { &mut (*self.0).unwoken_bytes[(ring & (MAX_RINGS as u32 - 1)) as usize] };
        *unwoken += record_bytes;
        if *unwoken >= wake_bytes as u64 {
            *unwoken = 0;
            BPF_RB_FORCE_WAKEUP as u64
        } else {
            BPF_RB_NO_WAKEUP as u64
        }
    }
}

/// A parsed, selected segment: where its payload starts, the header to emit and its ring.
struct Selected {
    payload_offset: u32,
    header: SegmentHeader,
    ring: u32,
    /// `TapConfig::wake_bytes`, read once per packet with the rest of the configuration.
    wake_bytes: u32,
    /// `TapConfig::elide`: consult [`SKIPS`].
    elide: bool,
}

#[inline(always)]
fn tap<P: Packet>(ctx: &P, hook: Hook) {
    let Some(counters) = Counters::get() else { return };
    counters.add(Counter::Seen, 1);
    if let Some(sel) = parse_and_select(ctx, hook) {
        counters.add(Counter::Selected, 1);
        let elide = is_elided(&sel);
        if elide {
            counters.add(Counter::Elided, sel.header.payload_len as u64);
        }
        match sel.ring {
            0 => emit::<P, 0>(ctx, &sel, &counters, elide),
            1 => emit::<P, 1>(ctx, &sel, &counters, elide),
            2 => emit::<P, 2>(ctx, &sel, &counters, elide),
            3 => emit::<P, 3>(ctx, &sel, &counters, elide),
            4 => emit::<P, 4>(ctx, &sel, &counters, elide),
            5 => emit::<P, 5>(ctx, &sel, &counters, elide),
            6 => emit::<P, 6>(ctx, &sel, &counters, elide),
            _ => emit::<P, 7>(ctx, &sel, &counters, elide),
        }
    }
}

/// Whether to leave the segment's payload out: all of it lies in a range the agent listed
/// in [`SKIPS`] (the rest of a body it will not read). A segment only partly inside is
/// copied whole, as are segments no larger than a small record (their copy costs less than
/// the lookup): a variable start offset in the copy loop made the verifier explore too many
/// states, and the segment straddling a range's end comes once per body.
/// An entry is removed by the segment that reaches its end (or by any segment outside it:
/// a stale entry of an earlier connection on the same addresses and ports goes too).
#[inline(always)]
fn is_elided(sel: &Selected) -> bool {
    let h = &sel.header;
    if !sel.elide || h.payload_len <= SMALL_CHUNK as u32 {
        return false;
    }
    let key = SkipKey { saddr: h.saddr, daddr: h.daddr, sport: h.sport, dport: h.dport };
    // SAFETY: the value is copied out at once, before any other map operation.
    let Some(range) = (unsafe { SKIPS.get(key) }).copied() else { return false };
    if range.is_reached(h.seq, h.payload_len) {
        let _ = SKIPS.remove(key);
    }
    range.elided(h.seq, h.payload_len) == h.payload_len
}

/// Reads a header of type `T` at `offset`. Headers are almost always in the linear part of
/// the skb, where a bounds-checked direct read costs a few instructions; a helper call
/// (`bpf_skb_load_bytes`, which also reads paged data) costs about ten times that, and a
/// packet needs three or four headers. So: direct when the verifier-visible bounds check
/// passes, the helper otherwise.
#[inline(always)]
fn read<T: Copy, P: Packet>(ctx: &P, offset: usize) -> Option<T> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + offset + core::mem::size_of::<T>() <= end {
        // SAFETY: the range lies within the packet's linear data, checked just above (the
        // check the verifier demands); headers have no alignment guarantee, hence unaligned.
        return Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) });
    }
    let mut out = core::mem::MaybeUninit::<T>::uninit();
    let len = core::mem::size_of::<T>() as u32;
    // SAFETY: `out` has room for a T; on success the helper wrote all of it.
    unsafe {
        if ctx.load_bytes(offset as u32, out.as_mut_ptr().cast(), len) != 0 {
            return None;
        }
        Some(out.assume_init())
    }
}

/// Parses Ethernet (+ one VLAN tag), IPv4/IPv6 and TCP, and applies the service selection.
#[inline(always)]
fn parse_and_select<P: Packet>(ctx: &P, hook: Hook) -> Option<Selected> {
    let cfg = TAP_CONFIG.get(0)?;
    if cfg.capture == 0 {
        return None;
    }
    if cfg.ignore_mark != 0 && ctx.mark() == cfg.ignore_mark {
        return None; // the agent's own traffic to a shadow
    }
    let eth: EthHdr = read(ctx, 0)?;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // A tag in the packet data (not offloaded to skb->vlan_tci): TCI, then the real type.
        let inner: [u8; 4] = read(ctx, l3)?;
        ether_type = u16::from_be_bytes([inner[2], inner[3]]);
        l3 += 4;
    }

    let mut header = empty_header(ctx, hook);
    let (l4, ip_payload_len) = match ether_type {
        ETH_P_IP => parse_ipv4(ctx, l3, &mut header)?,
        ETH_P_IPV6 => parse_ipv6(ctx, l3, &mut header)?,
        _ => return None,
    };

    let tcp: TcpHdr = read(ctx, l4)?;
    // SAFETY: TcpHdr is a 20-byte repr(C) struct of byte fields; bytes 12 and 13 are the data
    // offset and the flags, which network-types 0.2 only exposes bit by bit.
    let raw: &[u8; TcpHdr::LEN] = unsafe { &*(&tcp as *const TcpHdr).cast() };
    let tcp_len = ((raw[12] >> 4) as u32) * 4;
    if tcp_len < TcpHdr::LEN as u32 {
        return None;
    }
    header.sport = u16::from_be_bytes(tcp.source);
    header.dport = u16::from_be_bytes(tcp.dest);
    header.seq = u32::from_be_bytes(tcp.seq);
    header.ack = u32::from_be_bytes(tcp.ack_seq);
    header.window = u16::from_be_bytes(tcp.window);
    header.flags = raw[13];

    let payload_offset = l4 as u32 + tcp_len;
    // The skb length bounds the payload; the IP length excludes Ethernet padding of short
    // frames. GSO/BIG TCP packets may carry an IP length of 0: then the skb length rules.
    let skb_payload = ctx.total_len().saturating_sub(payload_offset);
    let ip_payload = ip_payload_len.saturating_sub(tcp_len);
    header.payload_len =
        if ip_payload_len == 0 || ip_payload > skb_payload { skb_payload } else { ip_payload };
    // Pure ACKs and window updates carry nothing we need (SYN learns the ISN, FIN and RST end
    // a stream): they leave before the service lookups and the clock, and they are about
    // half the packets of a flow.
    if header.payload_len == 0
        && header.flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0
    {
        return None;
    }

    header.direction = select(cfg, &header)? as u8;
    // Only now: the clock read is a helper call that unselected packets need not pay for.
    // SAFETY: bpf_ktime_get_ns takes no arguments and has no preconditions.
    header.ts_ns = unsafe { bpf_ktime_get_ns() };
    let ring = ring_of(&header, cfg.rings);
    let elide = cfg.elide != 0;
    Some(Selected { payload_offset, header, ring, wake_bytes: cfg.wake_bytes, elide })
}

#[inline(always)]
fn empty_header<P: Packet>(ctx: &P, hook: Hook) -> SegmentHeader {
    SegmentHeader {
        ts_ns: 0,
        ifindex: ctx.ifindex(),
        seq: 0,
        ack: 0,
        payload_len: 0,
        chunk_offset: 0,
        captured_len: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        window: 0,
        family: 0,
        flags: 0,
        direction: 0,
        hook: hook as u8,
        elided: 0,
        _pad: [0; 5],
    }
}

/// Returns the TCP header offset and the IP payload length (0 if unknown).
#[inline(always)]
fn parse_ipv4<P: Packet>(ctx: &P, l3: usize, header: &mut SegmentHeader) -> Option<(usize, u32)> {
    let ip: Ipv4Hdr = read(ctx, l3)?;
    if ip.proto != IpProto::Tcp as u8 {
        return None;
    }
    // Only the first fragment carries the TCP header; later fragments cannot be matched.
    if ip.frag_offset() != 0 {
        return None;
    }
    let ihl = ip.ihl() as usize; // already in bytes in network-types 0.2
    if ihl < Ipv4Hdr::LEN {
        return None;
    }
    header.family = 4;
    header.saddr[..4].copy_from_slice(&ip.src_addr);
    header.daddr[..4].copy_from_slice(&ip.dst_addr);
    let tot = ip.tot_len() as u32;
    Some((l3 + ihl, tot.saturating_sub(ihl as u32)))
}

#[inline(always)]
fn parse_ipv6<P: Packet>(ctx: &P, l3: usize, header: &mut SegmentHeader) -> Option<(usize, u32)> {
    let ip: Ipv6Hdr = read(ctx, l3)?;
    header.family = 6;
    header.saddr = ip.src_addr;
    header.daddr = ip.dst_addr;
    let mut next = ip.next_hdr;
    let mut off = l3 + Ipv6Hdr::LEN;
    let mut payload = u16::from_be_bytes(ip.payload_len) as u32;
    for _ in 0..MAX_IPV6_EXT {
        if !is_skipped_ipv6_ext(next) {
            break;
        }
        let ext: [u8; 2] = read(ctx, off)?;
        let len = (ext[1] as usize + 1) * 8;
        next = ext[0];
        off += len;
        payload = payload.saturating_sub(len as u32);
    }
    if next != IpProto::Tcp as u8 {
        return None;
    }
    Some((off, payload))
}

/// Applies the service selection. A segment toward a service port is a request, one from a
/// service port a response; with address restriction on, the service side must also be in a
/// service network.
#[inline(always)]
fn select(cfg: &TapConfig, h: &SegmentHeader) -> Option<Direction> {
    if cfg.capture & CAPTURE_REQUESTS != 0 && is_service(cfg, h.dport, &h.daddr, h.family) {
        return Some(Direction::Request);
    }
    if cfg.capture & CAPTURE_RESPONSES != 0 && is_service(cfg, h.sport, &h.saddr, h.family) {
        return Some(Direction::Response);
    }
    None
}

#[inline(always)]
fn is_service(cfg: &TapConfig, port: u16, addr: &[u8; 16], family: u8) -> bool {
    match SERVICE_PORTS.get(port as u32) {
        Some(v) if *v != 0 => {}
        _ => return false,
    }
    if cfg.restrict_addrs == 0 {
        return true;
    }
    if family == 4 {
        let key = Key::new(32, [addr[0], addr[1], addr[2], addr[3]]);
        SERVICE_NETS_V4.get(key).is_some()
    } else {
        SERVICE_NETS_V6.get(Key::new(128, *addr)).is_some()
    }
}

/// Copies the segment into the ring.
///
/// Why size classes and chunks: `bpf_ringbuf_reserve` needs a size the verifier knows, and
/// `bpf_skb_load_bytes` a length it can bound. A payload up to 256 bytes (a typical GET) takes
/// one 336-byte slot; up to 2 KiB (one MSS on a 1500-byte MTU) a 2 KiB slot; anything larger
/// (GSO/GRO super-packets of up to 64 KiB, non-linear) is cut into 16 KiB chunk records in a
/// bounded loop. `bpf_skb_load_bytes` (`bpf_xdp_load_bytes` under XDP) copies straight from
/// the (possibly paged) packet into ring memory, so each byte is copied once in the kernel. The cost is ring space, not copying:
/// a record reserves its whole class, so the unused tail of a slot is slack (up to 255 bytes
/// of a small slot, about 600 bytes for a full 1448-byte MSS in a 2 KiB slot, and up to
/// 14 KiB for the last chunk of a super-packet: a 2049-byte payload takes a 16 KiB slot);
/// plus one reserve/submit per 16 KiB and an 80-byte header per record. The slack is held
/// only until the reader consumes the record.
#[inline(always)]
fn emit<P: Packet, const R: u32>(ctx: &P, sel: &Selected, counters: &Counters, elide: bool) {
    let len = sel.header.payload_len;
    if elide {
        // Left out whole: metadata only, the reader still learns the bytes exist.
        emit_chunk::<P, 0, R>(ctx, sel, counters, len, 0, true);
        return;
    }
    if len == 0 {
        // SYN, FIN or RST (parse_and_select let no other empty segment through): metadata.
        emit_chunk::<P, 0, R>(ctx, sel, counters, 0, 0, false);
        return;
    }
    if len <= SMALL_CHUNK as u32 {
        emit_chunk::<P, SMALL_CHUNK, R>(ctx, sel, counters, 0, len, false);
        return;
    }
    if len <= MEDIUM_CHUNK as u32 {
        emit_chunk::<P, MEDIUM_CHUNK, R>(ctx, sel, counters, 0, len, false);
        return;
    }
    // Loop-carried state is only the chunk index: the offset and length of each chunk are
    // recomputed from it, so the verifier sees identical states at the loop head (apart from
    // `i`) and does not explore the two chunk-length paths of every iteration separately.
    let chunks = (len - 1) / LARGE_CHUNK as u32 + 1;
    for i in 0..MAX_CHUNKS {
        if i >= chunks {
            return;
        }
        let offset = i * LARGE_CHUNK as u32;
        let n = if i + 1 == chunks { len - offset } else { LARGE_CHUNK as u32 };
        if !emit_chunk::<P, LARGE_CHUNK, R>(ctx, sel, counters, offset, n, false) {
            return;
        }
    }
    if chunks > MAX_CHUNKS {
        counters.add(Counter::Truncated, 1);
    }
}

/// Reserves one record of class `N`, fills it with the header and `n` payload bytes starting
/// at `offset` in the payload, and submits it; `elided`: the bytes before `offset` were
/// left out on purpose. Returns false if nothing more should be tried.
#[inline(always)]
fn emit_chunk<P: Packet, const N: usize, const R: u32>(
    ctx: &P,
    sel: &Selected,
    counters: &Counters,
    offset: u32,
    n: u32,
    elided: bool,
) -> bool {
    let Some(mut entry) = ring::<R>().reserve::<Record<N>>(0) else {
        counters.add(Counter::Lost, 1);
        return false;
    };
    let rec = entry.as_mut_ptr();
    let mut copied = 0u32;
    if N > 0 && n > 0 {
        // The helper rejects a length that might be zero or exceed the record, and the
        // verifier loses bounds LLVM proved on another register copy. So hide `n` from LLVM
        // (a volatile read: it cannot fold the mask away) and restate the bound
        // arithmetically; with N a power of two this is the identity on 1..=N.
        // SAFETY: a volatile read of a local the function owns.
        let n_opaque = unsafe { core::ptr::read_volatile(&n) };
        let bounded = ((n_opaque.wrapping_sub(1)) & (N as u32 - 1)) + 1;
        // SAFETY: `rec` points to a reserved ring record of size_of::<Record<N>>() bytes, so
        // its `data` holds N bytes and `bounded` is in 1..=N; the helper checks the offset
        // and length against the skb itself and fails (returns < 0) rather than over-read.
        let ret = unsafe {
            ctx.load_bytes(sel.payload_offset + offset, (*rec).data.as_mut_ptr().cast(), bounded)
        };
        if ret == 0 {
            copied = bounded;
        } else {
            counters.add(Counter::Truncated, 1);
        }
    }
    // SAFETY: `rec` is the reserved record, valid and exclusively ours until `submit`.
    unsafe {
        let h = &mut (*rec).header;
        *h = sel.header;
        h.chunk_offset = offset;
        h.captured_len = copied;
        h.elided = u8::from(elided);
    }
    let record_bytes = core::mem::size_of::<Record<N>>() as u64;
    entry.submit(counters.wakeup_flags(sel.wake_bytes, R, record_bytes));
    counters.add(Counter::Records, 1);
    counters.add(Counter::Bytes, copied as u64);
    copied == n
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
