//! Pod names and namespaces from the container runtime, without the API server: the CRI
//! (containerd's socket) lists the pod sandboxes, and each one's verbose status holds the
//! OCI spec it runs with, whose network namespace path ends in the name the follower found
//! under /run/netns. A veth's pod is then `namespace/name` rather than the namespace file's
//! name. gRPC is two unary calls here, over hyper's HTTP/2 client on the unix socket; the
//! messages are the few fields read, declared with prost (field numbers of k8s.io/cri-api
//! runtime/v1).
use std::{collections::HashMap, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Where containerd serves the CRI.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// The largest answer read (a node's sandboxes, each a few hundred bytes).
const MAX_ANSWER: usize = 16 << 20;
/// A call that takes longer is abandoned (the pod is then named by its namespace file).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The CRI messages the agent reads: only the fields it uses.
pub mod proto {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxResponse {
        #[prost(message, repeated, tag = "1")]
        pub items: Vec<PodSandbox>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandbox {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub metadata: Option<PodSandboxMetadata>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub uid: String,
        #[prost(string, tag = "3")]
        pub namespace: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatusRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
        #[prost(bool, tag = "2")]
        pub verbose: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatusResponse {
        /// Verbose only: `"info"` holds the runtime's JSON, with `runtimeSpec`.
        #[prost(map = "string, string", tag = "2")]
        pub info: HashMap<String, String>,
    }
}

/// A gRPC message: the 5-byte prefix (not compressed, length) and the protobuf.
pub fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.encoded_len());
    out.put_u8(0);
    out.put_u32(message.encoded_len() as u32);
    message.encode(&mut out).expect("a BytesMut grows");
    out.freeze()
}

/// The message of a gRPC body holding one.
pub fn grpc_unframe<M: prost::Message + Default>(mut body: Bytes) -> Result<M> {
    if body.len() < 5 || body[0] != 0 {
        bail!("not one uncompressed gRPC message");
    }
    body.advance(1);
    let len = body.get_u32() as usize;
    if len != body.len() {
        bail!("a gRPC message of {len} bytes in {}", body.len());
    }
    Ok(M::decode(body)?)
}

/// Pod names by network namespace name, asked of the CRI.
pub struct CriPods {
    socket: PathBuf,
    /// "namespace/name" by the network namespace's file name.
    by_netns: HashMap<String, String>,
    /// Sandboxes whose status was read (their namespace is in `by_netns` if they had one).
    known: HashMap<String, Option<String>>,
}

impl CriPods {
    pub fn new(socket: PathBuf) -> CriPods {
        CriPods { socket, by_netns: HashMap::new(), known: HashMap::new() }
    }

    /// `namespace/name` of the pod whose network namespace is `/run/netns/<netns>`: from
    /// what was read, else after reading the sandboxes not seen yet.
    pub async fn pod(&mut self, netns: &str) -> Option<String> {
        if let Some(pod) = self.by_netns.get(netns) {
            return Some(pod.clone());
        }
        if let Err(e) = tokio::time::timeout(CALL_TIMEOUT, self.refresh())
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in {CALL_TIMEOUT:?}")))
        {
            tracing::warn!("CRI at {}: {e:#}", self.socket.display());
        }
        self.by_netns.get(netns).cloned()
    }

    async fn refresh(&mut self) -> Result<()> {
        let listed: proto::ListPodSandboxResponse =
            self.call("ListPodSandbox", &proto::ListPodSandboxRequest {}).await?;
        let ids: Vec<&str> = listed.items.iter().map(|s| s.id.as_str()).collect();
        self.known.retain(|id, _| ids.contains(&id.as_str()));
        for sandbox in &listed.items {
            if self.known.contains_key(&sandbox.id) {
                continue;
            }
            let request = proto::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.id.clone(),
                verbose: true,
            };
            let status: proto::PodSandboxStatusResponse =
                self.call("PodSandboxStatus", &request).await?;
            let netns = status.info.get("info").and_then(|json| netns_name(json));
            if let (Some(netns), Some(meta)) = (&netns, &sandbox.metadata) {
                self.by_netns.insert(netns.clone(), format!("{}/{}", meta.namespace, meta.name));
            }
            self.known.insert(sandbox.id.clone(), netns);
        }
        // Namespaces of sandboxes gone are forgotten with them.
        let live: Vec<&String> = self.known.values().flatten().collect();
        self.by_netns.retain(|netns, _| live.contains(&netns));
        Ok(())
    }

    /// One unary call of runtime.v1.RuntimeService.
    async fn call<Q: prost::Message, A: prost::Message + Default>(
        &self,
        method: &str,
        request: &Q,
    ) -> Result<A> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.context("connecting")?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .context("HTTP/2 handshake")?;
        tokio::spawn(connection);
        let request =
            hyper::Request::post(format!("http://cri/runtime.v1.RuntimeService/{method}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(grpc_frame(request)))?;
        let response = sender.send_request(request).await.with_context(|| method.to_owned())?;
        if response.status() != hyper::StatusCode::OK {
            bail!("{method}: HTTP {}", response.status());
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER).collect().await;
        let body = body.map_err(|e| anyhow::anyhow!("{method}: {e}"))?;
        let status = body.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.as_bytes());
        if status.is_some_and(|s| s != b"0") {
            bail!("{method}: grpc-status {}", String::from_utf8_lossy(status.unwrap_or_default()));
        }
        grpc_unframe(body.to_bytes()).with_context(|| format!("{method}: the answer"))
    }
}

/// The network namespace file name in a sandbox's verbose info: its OCI spec's network
/// namespace path (`/var/run/netns/cni-...`), last component.
fn netns_name(info_json: &str) -> Option<String> {
    let info: serde_json::Value = serde_json::from_str(info_json).ok()?;
    let namespaces = info["runtimeSpec"]["linux"]["namespaces"].as_array()?;
    let network = namespaces.iter().find(|n| n["type"] == "network")?;
    let path = std::path::Path::new(network["path"].as_str()?);
    Some(path.file_name()?.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_namespace_is_read_from_the_runtime_spec() {
        let info = r#"{"pid":1,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},
            {"type":"network","path":"/var/run/netns/cni-1234"}]}}}"#;
        assert_eq!(netns_name(info).as_deref(), Some("cni-1234"));
        assert_eq!(netns_name(r#"{"runtimeSpec":{}}"#), None);
        assert_eq!(netns_name("not json"), None);
    }

    #[test]
    fn grpc_frames_round_trip_and_bad_ones_are_refused() {
        let request =
            proto::PodSandboxStatusRequest { pod_sandbox_id: "abc".into(), verbose: true };
        let frame = grpc_frame(&request);
        assert_eq!(frame[0], 0);
        assert_eq!(grpc_unframe::<proto::PodSandboxStatusRequest>(frame.clone()).unwrap(), request);
        let short = frame.slice(..frame.len() - 1);
        assert!(grpc_unframe::<proto::PodSandboxStatusRequest>(short).is_err());
        assert!(grpc_unframe::<proto::PodSandboxStatusRequest>(Bytes::from_static(
            b"\x01\0\0\0\0"
        ))
        .is_err());
    }
}
