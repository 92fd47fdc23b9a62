//! Hand-built Ethernet frames sent through an interface with an AF_PACKET socket. They leave
//! through the interface's tc egress hook like any other packet, so the real kernel program
//! parses them: this reaches header layouts plain sockets do not produce here (802.1Q tags in
//! the packet data, IPv6 extension headers, IPv4 options, fragments).
use std::net::IpAddr;

use anyhow::{bail, Result};

/// A TCP segment and the framing around it.
#[derive(Clone, Debug)]
pub struct TcpFrame {
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub flags: u8,
    pub payload: Vec<u8>,
    /// IPv4: add 8 bytes of options (IHL 7). IPv6: add a hop-by-hop options header.
    pub ip_options: bool,
    /// IPv4 only: mark as a non-first fragment (offset 8 bytes).
    pub later_fragment: bool,
    /// The L4 protocol number (6 for TCP).
    pub protocol: u8,
}

impl TcpFrame {
    pub fn new(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> TcpFrame {
        TcpFrame {
            vlan: None,
            src,
            dst,
            sport,
            dport,
            seq: 1000,
            flags: 0x18, // PSH | ACK
            payload: payload.to_vec(),
            ip_options: false,
            later_fragment: false,
            protocol: 6,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut tcp = Vec::with_capacity(20 + self.payload.len());
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&1u32.to_be_bytes()); // ack
        tcp.extend_from_slice(&[5 << 4, self.flags]);
        tcp.extend_from_slice(&502u16.to_be_bytes()); // window
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        tcp.extend_from_slice(&self.payload);

        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if let Some(vid) = self.vlan {
            frame.extend_from_slice(&[0x81, 0x00]);
            frame.extend_from_slice(&vid.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                frame.extend_from_slice(&[0x08, 0x00]);
                let ihl = if self.ip_options { 7 } else { 5 };
                let total = (ihl * 4 + tcp.len()) as u16;
                let frag: u16 = if self.later_fragment { 1 } else { 0x4000 };
                frame.extend_from_slice(&[0x40 | ihl as u8, 0]);
                frame.extend_from_slice(&total.to_be_bytes());
                frame.extend_from_slice(&[0, 0]);
                frame.extend_from_slice(&frag.to_be_bytes());
                frame.extend_from_slice(&[64, self.protocol, 0, 0]);
                frame.extend_from_slice(&s.octets());
                frame.extend_from_slice(&d.octets());
                if self.ip_options {
                    frame.extend_from_slice(&[1; 8]); // NOPs
                }
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                frame.extend_from_slice(&[0x86, 0xdd]);
                let ext_len = if self.ip_options { 8 } else { 0 };
                let next = if self.ip_options { 0 } else { self.protocol };
                frame.extend_from_slice(&[0x60, 0, 0, 0]);
                frame.extend_from_slice(&((ext_len + tcp.len()) as u16).to_be_bytes());
                frame.extend_from_slice(&[next, 64]);
                frame.extend_from_slice(&s.octets());
                frame.extend_from_slice(&d.octets());
                if self.ip_options {
                    // Hop-by-hop: next header, length 0 (8 bytes), PadN padding.
                    frame.extend_from_slice(&[self.protocol, 0, 1, 4, 0, 0, 0, 0]);
                }
            }
            _ => panic!("mixed address families"),
        }
        frame.extend_from_slice(&tcp);
        frame
    }
}

/// Sends `frame` out of `iface` (in the calling thread's namespace). The tc egress hook has
/// run when this returns.
pub fn send_frame(iface: &str, frame: &[u8]) -> Result<()> {
    let ifindex = {
        let c = std::ffi::CString::new(iface)?;
        // SAFETY: valid C string.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    };
    if ifindex == 0 {
        bail!("no interface {iface}");
    }
    // SAFETY: plain syscalls on a socket we own and close; the address struct is zeroed and
    // filled as packet(7) describes.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if sent < 0 {
            bail!("sendto: {err}");
        }
    }
    Ok(())
}
