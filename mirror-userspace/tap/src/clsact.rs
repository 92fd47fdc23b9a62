//! Deleting a clsact qdisc over rtnetlink (aya can add one, but not remove it).
use std::io;

use anyhow::{Context, Result};
use netlink_packet_route::{
    tc::{TcAttribute, TcHandle, TcHeader, TcMessage},
    AddressFamily, RouteNetlinkMessage,
};

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
    let socket = crate::netlink::socket().context("a route socket")?;
    let delete = RouteNetlinkMessage::DelQueueDiscipline(message);
    match crate::netlink::request(&socket, delete, SEQUENCE, drop).context("RTM_DELQDISC")? {
        None => Ok(()),
        Some(e) if [libc::ENOENT, libc::EINVAL, libc::ENODEV].contains(&e) => Ok(()),
        Some(e) => Err(io::Error::from_raw_os_error(e)).context("RTM_DELQDISC"),
    }
}
