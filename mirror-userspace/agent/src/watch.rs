//! Watching a running agent: `mirror run` publishes one JSON line per mirrored request on a
//! unix socket; `mirror dump --watch` reads them. Like `hubble observe`, no second program is
//! attached. Watchers that fall behind lose lines (counted in the stream), never slow the
//! agent.
use std::{io, path::Path, sync::Arc};

use serde_json::json;
use tokio::{
    io::AsyncWriteExt,
    net::UnixListener,
    sync::broadcast::{self, error::RecvError},
};

use mirror_http::HttpRequest;

/// The default socket path.
pub const DEFAULT_SOCKET: &str = "/run/mirror/mirror.sock";

/// Lines kept for a slow watcher before it starts losing them.
const BACKLOG: usize = 4096;

/// The agent's side: cheap to call when nobody watches.
#[derive(Clone)]
pub struct Publisher {
    tx: broadcast::Sender<Arc<str>>,
}

impl Publisher {
    /// Binds `path` (replacing a stale socket file) and serves watchers.
    pub fn serve(path: &Path) -> io::Result<Publisher> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
            std::fs::remove_file(path)?; // left by an agent that is gone
        }
        let listener = UnixListener::bind(path)?;
        let (tx, _) = broadcast::channel(BACKLOG);
        let publisher = Publisher { tx };
        let subscribe = publisher.tx.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut rx = subscribe.subscribe();
                tokio::spawn(async move {
                    // Subscribed: from here on nothing is missed. Tell the watcher.
                    if stream.write_all(b"{\"type\":\"hello\"}\n").await.is_err() {
                        return;
                    }
                    loop {
                        let line = match rx.recv().await {
                            Ok(line) => line,
                            Err(RecvError::Lagged(n)) => {
                                format!("{{\"type\":\"lost\",\"lines\":{n}}}").into()
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

    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publishes a mirrored request and the shadows it went to.
    pub fn mirrored(&self, req: &HttpRequest, shadows: &[&str]) {
        if !self.watched() {
            return;
        }
        let head = &req.head;
        let host = head.header("host").map(|h| String::from_utf8_lossy(h).into_owned());
        let line = json!({
            "type": "mirrored", "ts_ns": req.first_ts_ns, "client": req.conn.client.to_string(),
            "server": req.conn.server.to_string(), "method": head.method(), "host": host,
            "target": head.target(), "version": format!("HTTP/1.{}", head.version()),
            "head_bytes": head.bytes().len(), "body_bytes": req.body.len(), "shadows": shadows,
        });
        let _ = self.tx.send(line.to_string().into());
    }
}
