//! Deleting a clsact qdisc over rtnetlink (aya can add one, but not remove it).
use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Result};

/// `TC_H_CLSACT`: the parent handle of the clsact qdisc.
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// The clsact qdisc's own handle, `ffff:`.
const CLSACT_HANDLE: u32 = 0xFFFF_0000;

/// `struct tcmsg` from linux/rtnetlink.h.
#[repr(C)]
struct TcMsg {
    family: u8,
    pad1: u8,
    pad2: u16,
    ifindex: i32,
    handle: u32,
    parent: u32,
    info: u32,
}

#[repr(C)]
struct Request {
    header: libc::nlmsghdr,
    tc: TcMsg,
}

/// Deletes the clsact qdisc (and with it any filter still on it) from `iface`. A missing
/// interface or qdisc is not an error: there is nothing left to clean up.
pub(crate) fn delete(iface: &str) -> Result<()> {
    let Some(ifindex) = super::iface::ifindex(iface) else {
        return Ok(());
    };
    let sock = Socket::open()?;
    let req = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: libc::RTM_DELQDISC,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        tc: TcMsg {
            family: libc::AF_UNSPEC as u8,
            pad1: 0,
            pad2: 0,
            ifindex: ifindex as i32,
            handle: CLSACT_HANDLE,
            parent: TC_H_CLSACT,
            info: 0,
        },
    };
    match sock.request(&req)? {
        0 => Ok(()),
        e if e == -libc::ENOENT || e == -libc::EINVAL || e == -libc::ENODEV => Ok(()),
        e => bail!("RTM_DELQDISC: {}", io::Error::from_raw_os_error(-e)),
    }
}

struct Socket(OwnedFd);

impl Socket {
    fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socket(2) just returned this fd and nothing else owns it.
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends one request and returns the errno of its ack (0 or a negative errno).
    fn request(&self, req: &Request) -> io::Result<i32> {
        // SAFETY: `req` is a repr(C) struct of the size we pass.
        let sent = unsafe {
            libc::send(self.0.as_raw_fd(), (req as *const Request).cast(), size_of::<Request>(), 0)
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 1024];
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let hdr_len = size_of::<libc::nlmsghdr>();
        if n < hdr_len + 4 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink ack"));
        }
        let msg_type = u16::from_ne_bytes([buf[4], buf[5]]);
        if msg_type != libc::NLMSG_ERROR as u16 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected netlink reply"));
        }
        Ok(i32::from_ne_bytes(buf[hdr_len..hdr_len + 4].try_into().expect("4 bytes")))
    }
}
