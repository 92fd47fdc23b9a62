//! Connections to shadows: marked so the kernel tap ignores them, and registered while they
//! live so the agent ignores their segments too (loop prevention); TLS for `https://`.
use std::{
    collections::HashSet,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http::Uri;
use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::{client::TlsStream, TlsConnector};

use crate::tls::server_name;

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

/// Where and how one shadow's connections are opened.
pub(crate) struct Endpoint {
    host: String,
    port: u16,
    /// SO_MARK of every connection (0: none).
    mark: u32,
    own: OwnSockets,
    /// For `https://` shadows: the connector and the name the certificate must carry.
    tls: Option<(TlsConnector, io::Result<ServerName<'static>>)>,
}

impl Endpoint {
    /// `tls` is used for an `https://` URI (the system's roots when None).
    pub(crate) fn new(
        uri: &Uri,
        mark: u32,
        own: OwnSockets,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> io::Result<Endpoint> {
        let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
        let https = uri.scheme_str() == Some("https");
        let tls = if https {
            let config = match tls {
                Some(config) => config,
                None => crate::TlsOptions::default()
                    .client_config()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            };
            Some((TlsConnector::from(config), server_name(host)))
        } else {
            None
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Endpoint { host: host.to_owned(), port, mark, own, tls })
    }

    /// Opens a connection, marked so the kernel tap ignores it, its local address registered
    /// in `own` while it lives; TLS is negotiated before it is handed out.
    pub(crate) async fn connect(&self) -> io::Result<Connected> {
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "shadow host"))?;
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if self.mark != 0 {
            // SO_MARK needs CAP_NET_ADMIN, which the live agent has (it attaches programs).
            // Without it (an unprivileged replay, an in-process test) the copy goes
            // unmarked: the kernel tap would then see it, and `OwnSockets` still keeps it out
            // of the pipeline.
            match socket2::SockRef::from(&socket).set_mark(self.mark) {
                Err(e) if e.kind() != io::ErrorKind::PermissionDenied => return Err(e),
                _ => {}
            }
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let local = SocketAddr::new(local.ip().to_canonical(), local.port());
        self.own.insert(local);
        let guard = OwnGuard { local, own: self.own.clone() };
        let stream = match &self.tls {
            None => ShadowStream::Plain(stream),
            Some((connector, name)) => {
                let name = name.as_ref().map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
                ShadowStream::Tls(Box::new(connector.connect(name.clone(), stream).await?))
            }
        };
        Ok(Connected { stream, guard })
    }
}

/// A connection to a shadow, plain or TLS.
pub(crate) enum ShadowStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A shadow connection and what unregisters its local address when it closes.
pub(crate) struct Connected {
    pub(crate) stream: ShadowStream,
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
