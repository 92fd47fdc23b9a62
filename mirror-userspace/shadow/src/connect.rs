//! Connections to shadows: marked so the kernel tap ignores them, and registered while they
//! live so the agent ignores their segments too (loop prevention).
use std::{
    collections::HashSet,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use http::Uri;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpSocket, TcpStream},
};

/// Local addresses of the agent's own connections to shadows, so the capture can ignore
/// them (loop prevention when a shadow sits behind a tapped interface).
#[derive(Clone, Default)]
pub struct OwnSockets(Arc<Mutex<HashSet<SocketAddr>>>);

impl OwnSockets {
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.0.lock().expect("not poisoned").contains(addr)
    }

    fn insert(&self, addr: SocketAddr) {
        self.0.lock().expect("not poisoned").insert(addr);
    }

    fn remove(&self, addr: &SocketAddr) {
        self.0.lock().expect("not poisoned").remove(addr);
    }
}

/// Opens a connection to the shadow of `uri` with SO_MARK `mark` (0: none) and registers its
/// local address in `own` while it lives.
pub(crate) async fn connect(uri: &Uri, mark: u32, own: OwnSockets) -> io::Result<TrackedStream> {
    let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "shadow host"))?;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if mark != 0 {
        // SO_MARK needs CAP_NET_ADMIN, which the live agent has (it attaches programs).
        // Without it (an unprivileged replay, an in-process test) the copy goes unmarked:
        // the kernel tap would then see it, and `OwnSockets` still keeps it out of the
        // pipeline.
        match socket2::SockRef::from(&socket).set_mark(mark) {
            Err(e) if e.kind() != io::ErrorKind::PermissionDenied => return Err(e),
            _ => {}
        }
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?;
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    own.insert(local);
    Ok(TrackedStream { stream, guard: OwnGuard { local, own } })
}

/// A shadow connection that unregisters its local address when closed.
pub(crate) struct TrackedStream {
    pub(crate) stream: TcpStream,
    pub(crate) guard: OwnGuard,
}

/// Keeps a local address registered in [`OwnSockets`] while it lives.
pub(crate) struct OwnGuard {
    local: SocketAddr,
    own: OwnSockets,
}

impl Drop for OwnGuard {
    fn drop(&mut self) {
        self.own.remove(&self.local);
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
