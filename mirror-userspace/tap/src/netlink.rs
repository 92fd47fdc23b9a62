//! One rtnetlink request and its answer, on a socket of the caller's (the rust-netlink
//! crates build and parse the messages; this is the exchange).
use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A route socket connected to the kernel.
pub(crate) fn socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Sends `message` asking for an acknowledgement, hands every answer message to `answer`,
/// and returns once acknowledged: `None` if it succeeded, else the errno the kernel gave.
pub(crate) fn request(
    socket: &Socket,
    message: RouteNetlinkMessage,
    sequence: u32,
    mut answer: impl FnMut(RouteNetlinkMessage),
) -> io::Result<Option<i32>> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = sequence;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize(); // sets the length and type that serialize() relies on
    let mut buf = vec![0u8; packet.header.length as usize];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut reply = vec![0u8; 8192];
    loop {
        let n = socket.recv(&mut &mut reply[..], 0)?.min(reply.len());
        let mut at = 0;
        while at < n {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[at..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let len = message.header.length as usize;
            if message.header.sequence_number == sequence {
                match message.payload {
                    // No code is an acknowledgement; a code is a negative errno.
                    NetlinkPayload::Error(e) => return Ok(e.code.map(|code| -code.get())),
                    NetlinkPayload::InnerMessage(inner) => answer(inner),
                    _ => {}
                }
            }
            if len == 0 {
                break;
            }
            at += (len + 3) & !3; // NLMSG_ALIGN
        }
    }
}

/// The interface the node routes `addr` through (`ip route get ADDR`), if any.
pub fn route_interface(addr: std::net::IpAddr) -> io::Result<Option<u32>> {
    use netlink_packet_route::{
        route::{RouteAttribute, RouteMessage},
        AddressFamily,
    };
    let mut message = RouteMessage::default();
    let (family, bits) = match addr {
        std::net::IpAddr::V4(_) => (AddressFamily::Inet, 32),
        std::net::IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    message.header.address_family = family;
    message.header.destination_prefix_length = bits;
    message.attributes.push(RouteAttribute::Destination(addr.into()));
    let mut oif = None;
    let socket = socket()?;
    request(&socket, RouteNetlinkMessage::GetRoute(message), 1, |answer| {
        if let RouteNetlinkMessage::NewRoute(route) = answer {
            oif = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
        }
    })?;
    Ok(oif)
}
