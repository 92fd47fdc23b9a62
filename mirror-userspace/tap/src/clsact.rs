//! Deleting a clsact qdisc over rtnetlink (aya can add one, but not remove it), with the
//! rust-netlink crates.
use std::io;

use anyhow::{Context, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::{
    tc::{TcAttribute, TcHandle, TcHeader, TcMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The clsact qdisc's own handle, `ffff:` (netlink-packet-route names only its parent,
/// `TcHandle::CLSACT`).
const CLSACT_HANDLE: TcHandle = TcHandle { major: 0xffff, minor: 0 };
const SEQUENCE: u32 = 1;

/// Deletes the clsact qdisc (and with it any filter still on it) from interface `ifindex`.
/// A missing interface or qdisc is not an error: there is nothing left to clean up. By index,
/// not name: an interface deleted and created again under the same name is someone else's.
/// The request names the kind, so a plain `ingress` qdisc in its place is never deleted.
pub(crate) fn delete(ifindex: u32) -> Result<()> {
    let header = TcHeader {
        family: AddressFamily::Unspec,
        index: i32::try_from(ifindex).context("interface index")?,
        handle: CLSACT_HANDLE,
        parent: TcHandle::CLSACT,
        info: 0,
    };
    let message = TcMessage::from_parts(header, vec![TcAttribute::Kind("clsact".into())]);
    match request(RouteNetlinkMessage::DelQueueDiscipline(message)).context("RTM_DELQDISC")? {
        None => Ok(()),
        Some(e) if [libc::ENOENT, libc::EINVAL, libc::ENODEV].contains(&e) => Ok(()),
        Some(e) => Err(io::Error::from_raw_os_error(e)).context("RTM_DELQDISC"),
    }
}

/// Sends one request and waits for its acknowledgement: `None` if it succeeded, else the
/// errno the kernel answered.
fn request(message: RouteNetlinkMessage) -> io::Result<Option<i32>> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = SEQUENCE;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize(); // sets the length and type that serialize() relies on
    let mut buf = vec![0u8; packet.header.length as usize];
    packet.serialize(&mut buf);
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&buf, 0)?;
    let mut reply = vec![0u8; 8192];
    loop {
        let n = socket.recv(&mut &mut reply[..], 0)?.min(reply.len());
        let mut at = 0;
        while at < n {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[at..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if message.header.sequence_number == SEQUENCE {
                if let NetlinkPayload::Error(e) = message.payload {
                    // No code is an acknowledgement; a code is a negative errno.
                    return Ok(e.code.map(|code| -code.get()));
                }
            }
            let len = message.header.length as usize;
            if len == 0 {
                break;
            }
            at += (len + 3) & !3; // NLMSG_ALIGN
        }
    }
}
