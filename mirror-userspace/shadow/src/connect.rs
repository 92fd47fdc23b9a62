//! Connections to shadows: marked so the kernel tap ignores them, and registered while they
//! live so the agent ignores their segments too (loop prevention); TLS for `https://`.
use std::{
    collections::HashSet,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use http::Uri;
use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::{client::TlsStream, TlsConnector};

use crate::tls::server_name;

/// Local addresses of the agent's own connections to shadows, so the capture can ignore
/// them (loop prevention when a shadow sits behind a tapped interface).
///
/// Asked about every captured segment toward a shadow's port (on a node, often the service's
/// own port), so the answer is usually given without the lock: a bitmap of the local ports in
/// use, read with one atomic load, and only a port in it takes the lock and the set.
#[derive(Clone)]
pub struct OwnSockets(Arc<Own>);

struct Own {
    addrs: Mutex<HashSet<SocketAddr>>,
    /// Bit `p` is set while some own socket has local port `p` (changed under the lock).
    ports: Box<[AtomicU64]>,
}

impl Default for OwnSockets {
    fn default() -> Self {
        let ports = (0..(1usize << 16) / 64).map(|_| AtomicU64::new(0)).collect();
        OwnSockets(Arc::new(Own { addrs: Mutex::default(), ports }))
    }
}

impl OwnSockets {
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        let (word, bit) = port_bit(addr.port());
        if self.0.ports[word].load(Ordering::Relaxed) & bit == 0 {
            return false;
        }
        self.0.addrs.lock().expect("not poisoned").contains(addr)
    }

    fn insert(&self, addr: SocketAddr) {
        let mut addrs = self.0.addrs.lock().expect("not poisoned");
        addrs.insert(addr);
        let (word, bit) = port_bit(addr.port());
        self.0.ports[word].fetch_or(bit, Ordering::Relaxed);
    }

    fn remove(&self, addr: &SocketAddr) {
        let mut addrs = self.0.addrs.lock().expect("not poisoned");
        addrs.remove(addr);
        // Another own socket may use the same port on another local address.
        if !addrs.iter().any(|a| a.port() == addr.port()) {
            let (word, bit) = port_bit(addr.port());
            self.0.ports[word].fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

fn port_bit(port: u16) -> (usize, u64) {
    (port as usize / 64, 1 << (port % 64))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_sockets_are_found_by_address_and_forgotten_when_closed() {
        let own = OwnSockets::default();
        let a: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:40000".parse().unwrap(); // same port, other address
        let c: SocketAddr = "10.0.0.1:40001".parse().unwrap();
        own.insert(a);
        own.insert(b);
        assert!(own.contains(&a) && own.contains(&b) && !own.contains(&c));
        own.remove(&a);
        assert!(!own.contains(&a) && own.contains(&b), "the port stays while b uses it");
        own.remove(&b);
        assert!(!own.contains(&b));
        assert_eq!(own.0.ports[40000 / 64].load(Ordering::Relaxed), 0);
    }
}
