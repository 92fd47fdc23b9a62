//! A shadow service on loopback for in-process tests of replay: it reads request heads
//! (requests without bodies), hands each to the test and answers as told.
use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};

/// A running test shadow.
pub struct TestShadow {
    pub addr: SocketAddr,
    /// Every request head received, as text, in order per connection.
    pub heads: mpsc::UnboundedReceiver<String>,
}

impl TestShadow {
    /// Answers every request with `reply` (a whole response), or never when `reply` is
    /// `None`. Must be called within a tokio runtime.
    pub async fn start(reply: Option<&'static [u8]>) -> TestShadow {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding loopback");
        let addr = listener.local_addr().expect("bound");
        let (tx, heads) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
                    while let Ok(n @ 1..) = conn.read(&mut chunk).await {
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                            let Some(reply) = reply else { continue };
                            if conn.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        TestShadow { addr, heads }
    }

    /// The next head received (panics after 10 s without one).
    pub async fn next_head(&mut self) -> String {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), self.heads.recv());
        next.await.expect("a request within 10 s").expect("the shadow runs")
    }
}

/// An empty 200 response.
pub const OK_EMPTY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
