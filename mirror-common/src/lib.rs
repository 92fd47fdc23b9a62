//! Types shared by the kernel tap (`mirror-ebpf`) and userspace (`mirror-userspace`).
//!
//! Everything here is `#[repr(C)]` and plain old data: the kernel writes these structs into
//! the ring buffer and maps, userspace reads the same bytes back. Keep field order and sizes
//! stable; both sides are always built from the same sources (the userspace build embeds the
//! kernel object it just compiled).
#![no_std]

/// Ring buffers carrying [`Record`]s from the kernel to userspace, one per agent worker: the
/// kernel picks a connection's ring by a hash of its addresses and ports, the same for both
/// directions ([`TapConfig::rings`] of them are used).
pub const MAP_RINGS: [&str; MAX_RINGS] = [
    "SEGMENTS_0",
    "SEGMENTS_1",
    "SEGMENTS_2",
    "SEGMENTS_3",
    "SEGMENTS_4",
    "SEGMENTS_5",
    "SEGMENTS_6",
    "SEGMENTS_7",
];
/// Most rings (and agent workers). The kernel masks a ring index with `MAX_RINGS - 1` to
/// give the verifier a bound: a power of two.
pub const MAX_RINGS: usize = 8;
const _: () = assert!(MAX_RINGS.is_power_of_two());
/// Single-entry array holding the [`TapConfig`].
pub const MAP_CONFIG: &str = "TAP_CONFIG";
/// Array of 65536 `u8`, indexed by TCP port: non-zero means "service port, capture it".
pub const MAP_PORTS: &str = "SERVICE_PORTS";
/// LPM trie of IPv4 service networks (key data: address bytes in network order).
pub const MAP_NETS_V4: &str = "SERVICE_NETS_V4";
/// LPM trie of IPv6 service networks (key data: address bytes in network order).
pub const MAP_NETS_V6: &str = "SERVICE_NETS_V6";
/// Per-CPU array with one [`CpuState`] (so the program looks it up once per packet).
pub const MAP_COUNTERS: &str = "COUNTERS";
/// LRU hash of [`SkipKey`] -> [`SkipRange`]: byte ranges of connections that the agent will
/// not read (the rest of a response body nothing consumes), so the kernel leaves them out of
/// the ring (see [`SegmentHeader::elided`]).
pub const MAP_SKIPS: &str = "SKIPS";
/// Entries of [`MAP_SKIPS`]; the least recently used goes first when it is full (a lost
/// entry only means bytes are copied after all).
pub const MAX_SKIPS: u32 = 16384;

/// Program names in the object, one per tc hook so each record knows where it was seen.
pub const PROG_INGRESS: &str = "mirror_ingress";
pub const PROG_EGRESS: &str = "mirror_egress";
/// The XDP form of the ingress program (`mirror run --xdp`).
pub const PROG_XDP: &str = "mirror_xdp";

/// Payload size classes of ring records. A ring reservation must have a size known to the
/// verifier, so instead of one record per packet sized to the packet we pick the smallest
/// class that fits: small requests cost a 256-byte slot, MSS-sized segments 2 KiB, and GSO
/// super-packets are cut into 16 KiB chunks.
pub const SMALL_CHUNK: usize = 256;
pub const MEDIUM_CHUNK: usize = 2048;
pub const LARGE_CHUNK: usize = 16384;
/// Bound of the chunk loop: payloads beyond `MAX_CHUNKS * LARGE_CHUNK` (512 KiB, twice the
/// largest BIG TCP default) are truncated and counted.
pub const MAX_CHUNKS: u32 = 32;

// The kernel clamps copy lengths with `(len - 1) & (CHUNK - 1)` (see mirror-ebpf): only a
// power of two makes that a bound the verifier accepts.
const _: () = assert!(
    SMALL_CHUNK.is_power_of_two()
        && MEDIUM_CHUNK.is_power_of_two()
        && LARGE_CHUNK.is_power_of_two()
);
const _: () = assert!(SMALL_CHUNK < MEDIUM_CHUNK && MEDIUM_CHUNK < LARGE_CHUNK);

/// Header constants both packet decoders use: the kernel tap and userspace's frame decoder
/// (pcap files) must parse alike.
pub mod parse {
    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_IPV6: u16 = 0x86dd;
    /// VLAN tags (802.1Q, and 802.1ad's outer tag); one tag is skipped.
    pub const ETH_P_8021Q: u16 = 0x8100;
    pub const ETH_P_8021AD: u16 = 0x88a8;
    pub const IPPROTO_TCP: u8 = 6;
    /// IPv6 extension headers skipped to find TCP (hop-by-hop, routing, destination options).
    pub const IPV6_HOPOPTS: u8 = 0;
    pub const IPV6_ROUTING: u8 = 43;
    pub const IPV6_DSTOPTS: u8 = 60;
    /// Most IPv6 extension headers walked (the verifier needs a bound; so does a decoder).
    pub const MAX_IPV6_EXT: usize = 4;

    /// Whether `next` is an extension header both decoders skip.
    pub const fn is_skipped_ipv6_ext(next: u8) -> bool {
        matches!(next, IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS)
    }
}

/// Default number of waiting bytes that wakes the reader (see `TapConfig::wake_bytes`).
pub const DEFAULT_WAKE_BYTES: u32 = 64 << 10;

/// Default ring buffer size (bytes, power of two); overridable at load time.
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;

/// [`TapConfig::capture`] bit: segments travelling toward a service port (requests).
pub const CAPTURE_REQUESTS: u32 = 1;
/// [`TapConfig::capture`] bit: segments leaving a service port (responses).
pub const CAPTURE_RESPONSES: u32 = 2;

/// Global settings of the tap, filled by userspace before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapConfig {
    /// Bitmask of `CAPTURE_REQUESTS` and `CAPTURE_RESPONSES`.
    pub capture: u32,
    /// Non-zero: the service side of a segment must also lie in one of the service networks.
    pub restrict_addrs: u32,
    /// Non-zero: packets carrying this mark (`SO_MARK` of the agent's own sockets) are
    /// ignored, so the agent never captures its own copies.
    pub ignore_mark: u32,
    /// Wake the reader each time a CPU has submitted this many record bytes since it last
    /// woke it (0: on every record); the reader polls on a timer as well.
    pub wake_bytes: u32,
    /// Rings in use, 1..=[`MAX_RINGS`] (0 is taken as 1).
    pub rings: u32,
    /// Non-zero: leave out the byte ranges listed in [`MAP_SKIPS`].
    pub elide: u32,
}

/// Which way a segment travels relative to the service.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to service (destination port is a service port).
    Request = 0,
    /// Service to client (source port is a service port).
    Response = 1,
}

impl Direction {
    pub const fn opposite(self) -> Direction {
        match self {
            Direction::Request => Direction::Response,
            Direction::Response => Direction::Request,
        }
    }
}

/// The tc hook a record was captured on.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    Ingress = 0,
    Egress = 1,
}

/// Defines a family of named things from one list: the enum, `ALL` (every variant, in
/// order), `COUNT` and `name()`. Every consumer (the kernel's counter array, the metrics, the
/// summaries) iterates `ALL`, so a new variant cannot be forgotten anywhere.
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )* }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name { $( $(#[$vmeta])* $variant, )* }

        impl $name {
            pub const ALL: [$name; <[&str]>::len(&[$($text),*])] = [$($name::$variant),*];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            pub const fn name(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }
        }
    };
}

/// Defines a set of `u64` counters from one list: the struct (public fields, `Default`) and
/// `fields()`, the (name, value) pairs summaries and metrics iterate.
#[macro_export]
macro_rules! counter_set {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $( $(#[$fmeta:meta])* $field:ident, )* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        $vis struct $name { $( $(#[$fmeta])* pub $field: u64, )* }

        impl $name {
            /// (name, value) of every counter, in definition order.
            pub fn fields(&self) -> [(&'static str, u64); <[&str]>::len(&[$(stringify!($field)),*])] {
                [$((stringify!($field), self.$field)),*]
            }

            /// Adds `other`'s counts to these (the counters of several workers).
            pub fn add(&mut self, other: &Self) {
                $(self.$field += other.$field;)*
            }
        }
    };
}

named_enum! {
    /// Indexes into the per-CPU counter array.
    #[repr(u32)]
    pub enum Counter {
        /// Packets the program ran on.
        Seen = "seen",
        /// TCP segments that matched the service selection and carry data, SYN, FIN or RST
        /// (pure ACKs are not looked at further).
        Selected = "selected",
        /// Records submitted to the ring.
        Records = "records",
        /// Payload bytes copied into the ring.
        Bytes = "bytes",
        /// Records lost because the ring was full.
        Lost = "lost",
        /// Segments whose payload could not be copied whole (over the chunk bound, or a failed
        /// load); the copied prefix is still emitted.
        Truncated = "truncated",
        /// Payload bytes left out on purpose: the agent said it would not read them.
        Elided = "elided",
    }
}

/// One CPU's state in the tap: its counters, indexed by [`Counter`], and the record bytes
/// it submitted to each ring since it last woke that ring's reader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuState {
    pub counters: [u64; Counter::COUNT as usize],
    pub unwoken_bytes: [u64; MAX_RINGS],
}

/// TCP flag bits as in the TCP header's 13th byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Metadata of one captured segment (or of one chunk of it), followed in the ring by
/// `captured_len` payload bytes.
///
/// Addresses are in network byte order (IPv4 in the first 4 bytes); ports, sequence numbers
/// and the window are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the program ran.
    pub ts_ns: u64,
    pub ifindex: u32,
    pub seq: u32,
    pub ack: u32,
    /// TCP payload bytes of the whole segment.
    pub payload_len: u32,
    /// Offset of this record's bytes within the segment's payload.
    pub chunk_offset: u32,
    /// Payload bytes that follow this header in the record.
    pub captured_len: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub window: u16,
    /// 4 or 6.
    pub family: u8,
    /// TCP flags, see [`tcp_flags`].
    pub flags: u8,
    /// A [`Direction`] as u8.
    pub direction: u8,
    /// A [`Hook`] as u8.
    pub hook: u8,
    /// Non-zero: the segment's bytes before `chunk_offset` were left out on purpose (they
    /// lie in a range of [`MAP_SKIPS`]), not lost. Set on the segment's first record only.
    pub elided: u8,
    pub _pad: [u8; 5],
}

/// A key of [`MAP_SKIPS`]: one direction of a connection, as the segments travelling that
/// way carry their addresses (network order, IPv4 in the first 4 bytes) and ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkipKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

/// A value of [`MAP_SKIPS`]: the sequence numbers `[from, until)` (wrapping) to leave out.
/// The kernel removes the entry once a segment reaches `until`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkipRange {
    pub from: u32,
    pub until: u32,
}

impl SkipRange {
    /// How many of the `len` bytes starting at sequence number `seq` to leave out: those
    /// from `seq` up to `until`, if `seq` lies in the range (distances wrap with the
    /// sequence space).
    #[inline(always)]
    pub fn elided(&self, seq: u32, len: u32) -> u32 {
        let span = self.until.wrapping_sub(self.from);
        let at = seq.wrapping_sub(self.from);
        if at >= span {
            return 0;
        }
        let rest = span - at;
        if rest < len {
            rest
        } else {
            len
        }
    }

    /// Whether `len` bytes at `seq` reach the end of the range (the entry is spent).
    #[inline(always)]
    pub fn is_reached(&self, seq: u32, len: u32) -> bool {
        let span = self.until.wrapping_sub(self.from);
        seq.wrapping_add(len).wrapping_sub(self.from) >= span || seq.wrapping_sub(self.from) >= span
    }
}

/// One ring record: a header and a payload area of a size class `N`.
#[repr(C)]
pub struct Record<const N: usize> {
    pub header: SegmentHeader,
    pub data: [u8; N],
}

/// Size of the header at the start of every record.
pub const HEADER_LEN: usize = core::mem::size_of::<SegmentHeader>();

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are repr(C), Copy, contain only integers and byte arrays, and have no
    // implicit padding (explicit `_pad` fields), so any bit pattern is valid.
    unsafe impl aya::Pod for super::TapConfig {}
    unsafe impl aya::Pod for super::CpuState {}
    unsafe impl aya::Pod for super::SegmentHeader {}
    unsafe impl aya::Pod for super::SkipKey {}
    unsafe impl aya::Pod for super::SkipRange {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_stable() {
        assert_eq!(HEADER_LEN, 80);
        assert_eq!(core::mem::align_of::<SegmentHeader>(), 8);
        assert_eq!(core::mem::size_of::<TapConfig>(), 24);
        assert_eq!(core::mem::size_of::<SkipKey>(), 36);
    }

    #[test]
    fn skip_ranges_wrap_with_the_sequence_space() {
        let r = SkipRange { from: u32::MAX - 99, until: 100 }; // 200 bytes across the wrap
        assert_eq!(r.elided(u32::MAX - 99, 50), 50);
        assert_eq!(r.elided(u32::MAX - 9, 500), 110);
        assert_eq!(r.elided(100, 10), 0, "at until: nothing left out");
        assert_eq!(r.elided(u32::MAX - 100, 10), 0, "before from: nothing left out");
        assert!(!r.is_reached(0, 99));
        assert!(r.is_reached(0, 100));
        assert!(r.is_reached(150, 1), "beyond the range: spent");
    }

    /// The kernel indexes its counter array with `counter as usize`.
    #[test]
    fn counters_index_their_array_in_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{}", c.name());
        }
        assert_eq!(Counter::ALL.len(), Counter::COUNT as usize);
    }
}
