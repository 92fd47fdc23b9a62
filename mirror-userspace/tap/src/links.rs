//! Following network interfaces as they come and go (pods' veths), from rtnetlink's link
//! notifications: the socket joins the link group first and lists the links after, so no
//! interface created in between is missed; notifications that arrive while the list is read
//! are held and given after it, in order, so the last word on an interface is the newest.
//! If the kernel drops notifications (the socket's buffer overflowed during a burst), the
//! links are listed again and the consumer reconciles against the whole list.
use std::{collections::VecDeque, io};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tokio::io::{unix::AsyncFd, Interest};

/// One network interface, as rtnetlink describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The interface's index in this network namespace: its identity (names change).
    pub ifindex: u32,
    pub name: String,
    /// For a veth, the id (in this namespace) of the namespace its peer lives in: the pod.
    pub peer_netns_id: Option<i32>,
}

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Every interface there is (the first event, and again after an overflow): whatever is
    /// not in it is gone.
    Listed(Vec<Link>),
    /// An interface appeared or changed (its name, its state).
    Changed(Link),
    /// An interface was deleted.
    Gone(u32),
}

/// Sequence number of our link dumps (notifications carry 0).
const DUMP_SEQUENCE: u32 = 0x6d69_7272;
/// Receive buffer asked for: a burst of pods created at once is many notifications.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Link notifications of the network namespace the process is in.
pub struct LinkWatcher {
    socket: AsyncFd<Socket>,
    buf: Vec<u8>,
    /// Events ready to hand out.
    ready: VecDeque<LinkEvent>,
    /// While a dump is read: the links listed so far, and notifications held until its end.
    dump: Option<(Vec<Link>, Vec<LinkEvent>)>,
}

impl LinkWatcher {
    /// Joins the link group, then asks for the list. Must be called within a tokio runtime.
    pub fn start() -> io::Result<LinkWatcher> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.add_membership(libc::RTNLGRP_LINK)?;
        // Best effort: without it the default buffer only overflows sooner (and we re-list).
        let _ = socket.set_rx_buf_sz(RECEIVE_BUFFER);
        socket.set_non_blocking(true)?;
        // SAFETY: the socket's fd stays open and the same while the AsyncFd owns it.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(io::Error::other)?;
        let mut watcher =
            LinkWatcher { socket, buf: vec![0; 64 << 10], ready: VecDeque::new(), dump: None };
        watcher.request_dump()?;
        Ok(watcher)
    }

    /// The next change. Errors are the socket's own (not an overflow: that re-lists).
    pub async fn next(&mut self) -> io::Result<LinkEvent> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(event);
            }
            let mut guard = self.socket.readable().await?;
            let read = guard.try_io(|socket| {
                let n = socket.get_ref().recv(&mut &mut self.buf[..], 0)?;
                Ok(n.min(self.buf.len()))
            });
            match read {
                Err(_would_block) => continue,
                Ok(Ok(n)) => self.parse(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!("link notifications overflowed: listing the links again");
                    self.request_dump()?;
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// Lists the links again: a [`LinkEvent::Listed`] follows (after the events before it).
    pub fn relist(&mut self) -> io::Result<()> {
        self.request_dump()
    }

    fn request_dump(&mut self) -> io::Result<()> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = DUMP_SEQUENCE;
        let payload = RouteNetlinkMessage::GetLink(LinkMessage::default());
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        packet.finalize();
        let mut buf = vec![0u8; packet.header.length as usize];
        packet.serialize(&mut buf);
        // A dump already under way is abandoned: its answers and the new one's share the
        // sequence number, so the list starts over and its end closes both.
        self.dump = Some((Vec::new(), self.dump.take().map(|(_, held)| held).unwrap_or_default()));
        self.socket.get_ref().send_to(&buf, &SocketAddr::new(0, 0), 0)?;
        Ok(())
    }

    /// Turns the `n` bytes just read into events.
    fn parse(&mut self, n: usize) {
        let mut at = 0;
        while at < n {
            let message = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[at..n])
            {
                Ok(message) => message,
                Err(e) => {
                    tracing::debug!("unreadable rtnetlink message: {e}");
                    return;
                }
            };
            let len = message.header.length as usize;
            let from_dump = message.header.sequence_number == DUMP_SEQUENCE;
            self.message(message.payload, from_dump);
            if len == 0 {
                return;
            }
            at += (len + 3) & !3; // NLMSG_ALIGN
        }
    }

    fn message(&mut self, payload: NetlinkPayload<RouteNetlinkMessage>, from_dump: bool) {
        let event = match payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => match link(&m) {
                Some(link) if from_dump => {
                    if let Some((listed, _)) = &mut self.dump {
                        listed.push(link);
                    }
                    return;
                }
                Some(link) => LinkEvent::Changed(link),
                None => return,
            },
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                LinkEvent::Gone(m.header.index)
            }
            NetlinkPayload::Done(_) if from_dump => {
                if let Some((listed, held)) = self.dump.take() {
                    self.ready.push_back(LinkEvent::Listed(listed));
                    self.ready.extend(held);
                }
                return;
            }
            _ => return,
        };
        match &mut self.dump {
            Some((_, held)) => held.push(event),
            None => self.ready.push_back(event),
        }
    }
}

fn link(message: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut peer_netns_id = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkNetNsId(id) => peer_netns_id = Some(*id),
            _ => {}
        }
    }
    Some(Link { ifindex: message.header.index, name: name?, peer_netns_id })
}

/// Which interfaces to follow: shell globs (`*`, `?`, `[...]`) separated by `|`, as in
/// `veth*|cali*|lxc*|eni*`.
#[derive(Clone, Debug)]
pub struct InterfacePatterns {
    text: String,
    globs: Vec<glob::Pattern>,
}

impl InterfacePatterns {
    /// Parses `veth*|cali*`; the error names the glob that is not one.
    pub fn parse(text: &str) -> Result<InterfacePatterns, String> {
        let globs = text
            .split('|')
            .map(str::trim)
            .map(|g| match g {
                "" => Err(format!("an empty pattern in {text:?}")),
                g => glob::Pattern::new(g).map_err(|e| format!("{g:?}: {e}")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(InterfacePatterns { text: text.to_owned(), globs })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.globs.iter().any(|g| g.matches(name))
    }
}

impl std::fmt::Display for InterfacePatterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_globs_separated_by_bars() {
        let p = InterfacePatterns::parse("veth*|cali*| lxc? |eni[0-9]*").unwrap();
        for name in ["veth1", "vethab12", "cali0", "lxc1", "eni3x"] {
            assert!(p.matches(name), "{name}");
        }
        for name in ["eth0", "lxc12", "enix", "myveth1", "lo"] {
            assert!(!p.matches(name), "{name}");
        }
        assert!(InterfacePatterns::parse("veth*||cali*").unwrap_err().contains("empty"));
        assert!(InterfacePatterns::parse("veth[").unwrap_err().contains("veth["));
    }
}
