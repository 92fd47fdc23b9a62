//! Header layouts sockets do not produce here, sent as hand-built frames through the node
//! side of the server's veth and parsed by the real kernel program on tc egress.
use std::net::IpAddr;

use mirror_capture::{Direction, Segment};
use mirror_tap::{AttachMode, Counter, RingSource, Tap, TapSettings};
use mirror_tests::{
    frames::{send_frame, TcpFrame},
    topology::{Family, Topology},
};

const PORT: u16 = 8080;
const PAYLOAD: &[u8] = b"GET /frame HTTP/1.1\r\nHost: svc\r\n\r\n";

struct Fixture {
    topo: Topology,
    tap: Tap,
    source: RingSource,
}

impl Fixture {
    fn new() -> Fixture {
        let topo = Topology::new().unwrap();
        let settings = TapSettings {
            interfaces: vec![topo.server_host_if.clone()],
            ports: vec![PORT],
            attach_mode: AttachMode::Auto,
            ..TapSettings::default()
        };
        let mut tap = Tap::attach(&settings).unwrap();
        let source = tap.segments().unwrap();
        Fixture { topo, tap, source }
    }

    fn frame(&self, family: Family) -> TcpFrame {
        let (src, dst): (IpAddr, IpAddr) =
            (self.topo.client_addr(family), self.topo.server_addr(family));
        TcpFrame::new(src, dst, 40000, PORT, PAYLOAD)
    }

    /// Sends the frame and returns what the tap captured for it.
    fn capture(&mut self, frame: &TcpFrame) -> Vec<Segment> {
        send_frame(&self.topo.server_host_if, &frame.build()).unwrap();
        let mut out = Vec::new();
        self.source.drain_now(&mut out);
        out
    }
}

fn assert_captured(segments: &[Segment], frame: &TcpFrame) {
    assert_eq!(segments.len(), 1, "{segments:?}");
    let s = &segments[0];
    assert_eq!(s.direction, Direction::Request);
    assert_eq!((s.src.ip(), s.src.port()), (frame.src, frame.sport));
    assert_eq!((s.dst.ip(), s.dst.port()), (frame.dst, frame.dport));
    assert_eq!(s.seq, frame.seq);
    assert_eq!(s.flags, frame.flags);
    assert_eq!(s.window, 502);
    assert_eq!(&s.payload[..], &frame.payload[..]);
}

#[tokio::test]
async fn vlan_tag_in_packet_data_is_parsed() {
    let mut fx = Fixture::new();
    for family in [Family::V4, Family::V6] {
        let frame = TcpFrame { vlan: Some(10), ..fx.frame(family) };
        let got = fx.capture(&frame);
        assert_captured(&got, &frame);
    }
}

#[tokio::test]
async fn ipv4_options_and_ipv6_extension_headers_are_skipped() {
    let mut fx = Fixture::new();
    for family in [Family::V4, Family::V6] {
        let frame = TcpFrame { ip_options: true, ..fx.frame(family) };
        let got = fx.capture(&frame);
        assert_captured(&got, &frame);
    }
}

#[tokio::test]
async fn non_tcp_and_later_fragments_are_ignored() {
    let mut fx = Fixture::new();
    let udp = TcpFrame { protocol: 17, ..fx.frame(Family::V4) };
    assert!(fx.capture(&udp).is_empty());
    let fragment = TcpFrame { later_fragment: true, ..fx.frame(Family::V4) };
    assert!(fx.capture(&fragment).is_empty());
    let counters = fx.tap.counters().unwrap();
    // The interface may also carry the kernel's own IPv6 neighbour discovery meanwhile.
    assert!(counters.get(Counter::Seen) >= 2, "{counters}");
    let selected = (counters.get(Counter::Selected), counters.get(Counter::Records));
    assert_eq!(selected, (0, 0), "{counters}");
}

#[tokio::test]
async fn pure_acks_are_not_emitted_but_syn_fin_rst_are() {
    let mut fx = Fixture::new();
    for (flags, emitted) in [(0x10, false), (0x02, true), (0x11, true), (0x04, true)] {
        let frame = TcpFrame { flags, payload: Vec::new(), ..fx.frame(Family::V4) };
        let got = fx.capture(&frame);
        assert_eq!(got.len(), usize::from(emitted), "flags {flags:#x}: {got:?}");
        if emitted {
            assert_eq!((got[0].flags, got[0].segment_len), (flags, 0));
        }
    }
}

#[tokio::test]
async fn payload_size_classes_are_exact_at_their_edges() {
    let mut fx = Fixture::new();
    // Frames beyond 1500 bytes need a larger MTU on both ends of the veth.
    let iface = fx.topo.server_host_if.clone();
    let mtu = ["link", "set", "mtu", "64000", "dev"];
    mirror_tests::netns::run(std::process::Command::new("ip").args(mtu).arg(&iface)).unwrap();
    fx.topo.server.ip(&[&mtu[..], &["eth0"]].concat()).unwrap();
    for len in [1, 255, 256, 257, 2047, 2048, 2049, 16384, 16385, 40000] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let frame = TcpFrame { payload, ..fx.frame(Family::V6) };
        let got = fx.capture(&frame);
        let mut joined = Vec::new();
        for s in &got {
            assert_eq!(s.chunk_offset as usize, joined.len());
            assert_eq!(s.segment_len as usize, len);
            assert!(!s.is_truncated());
            joined.extend_from_slice(&s.payload);
        }
        assert!(got.last().unwrap().is_last_chunk());
        assert_eq!(joined, frame.payload, "length {len}");
    }
}
