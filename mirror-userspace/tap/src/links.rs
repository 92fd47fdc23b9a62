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
    /// The listing being read, if one is.
    dump: Option<Dump>,
    /// Another listing was asked for while one was being read: the kernel refuses a second
    /// dump on a socket (EBUSY) until the first is done, so it is asked for then.
    again: bool,
}

/// A listing being read.
#[derive(Default)]
struct Dump {
    /// The links listed so far.
    listed: Vec<Link>,
    /// Notifications that came meanwhile, handed out after the list.
    held: Vec<LinkEvent>,
    /// Messages were lost meanwhile (an overflow): the list may lack links that exist, so
    /// it is not handed out (it would detach them), and the links are listed again.
    partial: bool,
}

impl LinkWatcher {
    /// Joins the link group, then asks for the list. Must be called within a tokio runtime.
    pub fn start() -> io::Result<LinkWatcher> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.add_membership(libc::RTNLGRP_LINK)?;
        grow_receive_buffer(&socket);
        socket.set_non_blocking(true)?;
        // SAFETY: the socket's fd stays open and the same while the AsyncFd owns it.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(io::Error::other)?;
        let buf = vec![0; 64 << 10];
        let ready = VecDeque::new();
        let mut watcher = LinkWatcher { socket, buf, ready, dump: None, again: false };
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
                Ok(Ok(n)) => self.parse(n)?,
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!("link notifications overflowed: listing the links again");
                    if let Some(dump) = &mut self.dump {
                        dump.partial = true;
                    }
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
        if self.dump.is_some() {
            self.again = true;
            return Ok(());
        }
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = DUMP_SEQUENCE;
        let payload = RouteNetlinkMessage::GetLink(LinkMessage::default());
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        packet.finalize();
        let mut buf = vec![0u8; packet.header.length as usize];
        packet.serialize(&mut buf);
        self.socket.get_ref().send_to(&buf, &SocketAddr::new(0, 0), 0)?;
        self.dump = Some(Dump::default());
        Ok(())
    }

    /// Turns the `n` bytes just read into events.
    fn parse(&mut self, n: usize) -> io::Result<()> {
        let mut at = 0;
        while at < n {
            let message = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[at..n])
            {
                Ok(message) => message,
                Err(e) => {
                    tracing::debug!("unreadable rtnetlink message: {e}");
                    return Ok(());
                }
            };
            let len = message.header.length as usize;
            let from_dump = message.header.sequence_number == DUMP_SEQUENCE;
            self.message(message.payload, from_dump)?;
            if len == 0 {
                return Ok(());
            }
            at += (len + 3) & !3; // NLMSG_ALIGN
        }
        Ok(())
    }

    fn message(
        &mut self,
        payload: NetlinkPayload<RouteNetlinkMessage>,
        from_dump: bool,
    ) -> io::Result<()> {
        let event = match payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => match link(&m) {
                Some(link) if from_dump => {
                    if let Some(dump) = &mut self.dump {
                        dump.listed.push(link);
                    }
                    return Ok(());
                }
                Some(link) => LinkEvent::Changed(link),
                None => return Ok(()),
            },
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                LinkEvent::Gone(m.header.index)
            }
            // The end of the listing; an error ends it too (and it is asked for again).
            NetlinkPayload::Done(_) | NetlinkPayload::Error(_) if from_dump => {
                return self.dump_ended(matches!(payload, NetlinkPayload::Error(_)));
            }
            _ => return Ok(()),
        };
        match &mut self.dump {
            Some(dump) => dump.held.push(event),
            None => self.ready.push_back(event),
        }
        Ok(())
    }

    fn dump_ended(&mut self, failed: bool) -> io::Result<()> {
        let Some(dump) = self.dump.take() else { return Ok(()) };
        if dump.partial || failed {
            self.again = true;
        } else {
            self.ready.push_back(LinkEvent::Listed(dump.listed));
        }
        self.ready.extend(dump.held);
        if std::mem::take(&mut self.again) {
            self.request_dump()?;
        }
        Ok(())
    }
}

/// Asks for a receive buffer of [`RECEIVE_BUFFER`]: forced past the system's `rmem_max`
/// where the process may (CAP_NET_ADMIN), else as large as it allows. Best effort: a
/// smaller buffer only overflows sooner (and the links are listed again).
fn grow_receive_buffer(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let size = RECEIVE_BUFFER as libc::c_int;
    // SAFETY: setsockopt with a valid int option value and its size.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if forced != 0 {
        let _ = socket.set_rx_buf_sz(RECEIVE_BUFFER);
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
