//! Watching a running agent: `mirror run` publishes one JSON line per mirrored request on a
//! unix socket; `mirror dump --watch` reads them. Like `hubble observe`, no second program is
//! attached. Watchers that fall behind lose lines (counted in the stream), never slow the
//! agent.
use std::{io, net::SocketAddr, os::unix::fs::PermissionsExt, path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::accept::AcceptBackoff;
use tokio::{
    io::AsyncWriteExt,
    net::UnixListener,
    sync::broadcast::{self, error::RecvError},
};

use mirror_http::{H2Event, H2Fields, HttpRequest, RequestView};

/// One line of the watch stream (JSON, tagged by `type`): the agent writes them, `mirror
/// dump --watch` reads them back with the same types.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WatchEvent {
    /// First line: the watcher is subscribed, nothing after it is missed unless announced.
    Hello,
    /// This watcher fell behind and lost `lines` lines.
    Lost { lines: u64 },
    /// A request was mirrored.
    Mirrored(Box<MirroredRequest>),
}

/// A mirrored request and the shadows its copies were queued for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MirroredRequest {
    /// Capture time of its first byte (ns since the epoch).
    pub ts_ns: u64,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub method: String,
    pub host: Option<String>,
    pub target: String,
    /// `HTTP/1.0`, `HTTP/1.1`.
    pub version: String,
    pub head_bytes: usize,
    pub body_bytes: usize,
    pub shadows: Vec<String>,
    /// The pod the server is in, when the agent follows pods and knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// HTTP/2: the stream's id (its body follows the line, so `body_bytes` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<u32>,
}

impl WatchEvent {
    /// The line, without its newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("plain data serialises")
    }
}

/// The default socket path.
pub const DEFAULT_SOCKET: &str = "/run/mirror/mirror.sock";

/// Lines kept for a slow watcher before it starts losing them.
const BACKLOG: usize = 4096;

/// The agent's side: cheap to call when nobody watches.
#[derive(Clone)]
pub struct Publisher {
    tx: broadcast::Sender<Arc<str>>,
    /// Names the server's pod, when the agent follows pods.
    pods: Option<crate::pods::Pods>,
}

/// Where watchers connect, and who may: the socket streams request heads, credentials
/// included, so it is the owner's alone (0600) unless a group is given (0660).
#[derive(Clone, Debug)]
pub struct WatchSocket {
    pub path: PathBuf,
    /// The group allowed to watch (its id).
    pub group: Option<u32>,
}

impl Publisher {
    /// Binds the socket (replacing a stale socket file) and serves watchers. The socket is
    /// bound under a temporary name, given its mode and group, then renamed into place: no
    /// moment where anyone else could connect.
    pub fn serve(socket: &WatchSocket) -> io::Result<Publisher> {
        let path = &socket.path;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                let running = format!("{} is served by a running agent", path.display());
                return Err(io::Error::new(io::ErrorKind::AddrInUse, running));
            }
            std::fs::remove_file(path)?; // left by an agent that is gone
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let unready = path.with_file_name(format!(".{name}.{}", std::process::id()));
        let _ = std::fs::remove_file(&unready);
        let listener = UnixListener::bind(&unready)?;
        let mode = if socket.group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&unready, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = socket.group {
            std::os::unix::fs::chown(&unready, None, Some(gid))?;
        }
        std::fs::rename(&unready, path)?;
        let (tx, _) = broadcast::channel(BACKLOG);
        let publisher = Publisher { tx, pods: None };
        let subscribe = publisher.tx.clone();
        tokio::spawn(async move {
            let mut backoff = AcceptBackoff::new("watch socket");
            loop {
                let mut stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        backoff.failed(&e).await;
                        continue;
                    }
                };
                backoff.accepted();
                let mut rx = subscribe.subscribe();
                tokio::spawn(async move {
                    // Subscribed: from here on nothing is missed. Tell the watcher.
                    let hello = WatchEvent::Hello.to_line() + "\n";
                    if stream.write_all(hello.as_bytes()).await.is_err() {
                        return;
                    }
                    loop {
                        let line = match rx.recv().await {
                            Ok(line) => line,
                            Err(RecvError::Lagged(lines)) => {
                                WatchEvent::Lost { lines }.to_line().into()
                            }
                            Err(RecvError::Closed) => return,
                        };
                        let sent = async {
                            stream.write_all(line.as_bytes()).await?;
                            stream.write_all(b"\n").await
                        };
                        if sent.await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(publisher)
    }

    /// Names the server's pod in each line, from `pods`.
    pub fn with_pods(self, pods: crate::pods::Pods) -> Publisher {
        Publisher { pods: Some(pods), ..self }
    }

    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publishes a mirrored request and the shadows it went to.
    pub fn mirrored(&self, req: &HttpRequest, shadows: &[&str]) {
        if !self.watched() {
            return;
        }
        let head = &req.head;
        let event = WatchEvent::Mirrored(Box::new(MirroredRequest {
            ts_ns: req.first_ts_ns,
            client: req.conn.client,
            server: req.conn.server,
            method: head.method().unwrap_or("").to_owned(),
            host: head.header("host").map(|h| String::from_utf8_lossy(h).into_owned()),
            target: head.target().unwrap_or("").to_owned(),
            version: format!("HTTP/1.{}", head.version()),
            head_bytes: head.bytes().len(),
            body_bytes: req.body.len(),
            shadows: shadows.iter().map(|s| s.to_string()).collect(),
            pod: self.pods.as_ref().and_then(|p| p.of(req.conn.server.ip())),
            stream: None,
        }));
        let _ = self.tx.send(event.to_line().into());
    }

    /// Publishes a mirrored HTTP/2 stream (at its request headers) and its shadows.
    pub fn mirrored_stream(&self, e: &H2Event, fields: &H2Fields, shadows: &[&str]) {
        if !self.watched() {
            return;
        }
        let event = WatchEvent::Mirrored(Box::new(MirroredRequest {
            ts_ns: e.ts_ns,
            client: e.conn.client,
            server: e.conn.server,
            method: fields.method().to_owned(),
            host: fields.authority().map(|h| String::from_utf8_lossy(h).into_owned()),
            target: fields.target().to_owned(),
            version: "HTTP/2".to_owned(),
            head_bytes: fields.iter().map(|(n, v)| n.len() + v.len()).sum(),
            body_bytes: 0,
            shadows: shadows.iter().map(|s| s.to_string()).collect(),
            pod: self.pods.as_ref().and_then(|p| p.of(e.conn.server.ip())),
            stream: Some(e.stream),
        }));
        let _ = self.tx.send(event.to_line().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines have the fields watchers of earlier versions read, and read back the same.
    #[test]
    fn lines_round_trip_in_the_documented_shape() {
        assert_eq!(WatchEvent::Hello.to_line(), r#"{"type":"hello"}"#);
        assert_eq!(WatchEvent::Lost { lines: 3 }.to_line(), r#"{"type":"lost","lines":3}"#);
        let event = WatchEvent::Mirrored(Box::new(MirroredRequest {
            ts_ns: 5,
            client: "10.0.0.1:4000".parse().unwrap(),
            server: "[fd00::2]:80".parse().unwrap(),
            method: "GET".into(),
            host: Some("svc".into()),
            target: "/x".into(),
            version: "HTTP/1.1".into(),
            head_bytes: 30,
            body_bytes: 0,
            shadows: vec!["s:80".into()],
            pod: None,
            stream: None,
        }));
        let line = event.to_line();
        assert!(
            line.starts_with(
                r#"{"type":"mirrored","ts_ns":5,"client":"10.0.0.1:4000","server":"[fd00::2]:80","#
            ),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<WatchEvent>(&line).unwrap(), event);
        assert!(serde_json::from_str::<WatchEvent>(r#"{"type":"mirrored"}"#).is_err());
    }
}
