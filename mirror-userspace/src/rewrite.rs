//! Turning a captured request into the copy sent to a shadow: Host rewrite (Envoy's rule by
//! default), header edits, X-Forwarded-For. Method, target, the order of the other headers
//! and the body bytes are kept.
use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::Full;

use crate::{
    config::{HeaderOps, HostRewrite},
    http::{decode_chunked, HttpRequest},
};

/// Envoy's shadow host: `host:port` -> `host-shadow:port`, `host` -> `host-shadow`,
/// `[::1]:p` -> `[::1]-shadow:p`.
pub fn shadow_host(host: &str) -> String {
    let port_at = host.rfind(':').filter(|&i| {
        let port = &host[i + 1..];
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && (!host.starts_with('[') || host[..i].ends_with(']'))
    });
    match port_at {
        Some(i) => format!("{}-shadow{}", &host[..i], &host[i..]),
        None => format!("{host}-shadow"),
    }
}

/// Why a request cannot be copied.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("invalid request line")]
    RequestLine,
    #[error("invalid header")]
    Header,
    #[error("invalid chunked body")]
    Body,
}

pub struct Rewriter {
    host: HostRewrite,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Rewriter {
    /// `ops` must have been validated (see `MirrorConfig::validate`).
    pub fn new(host: HostRewrite, ops: &HeaderOps) -> Result<Self, RewriteError> {
        let pair = |(n, v): (&String, &String)| -> Result<_, RewriteError> {
            Ok((
                HeaderName::from_bytes(n.as_bytes()).map_err(|_| RewriteError::Header)?,
                HeaderValue::from_str(v).map_err(|_| RewriteError::Header)?,
            ))
        };
        Ok(Self {
            host,
            set: ops.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: ops.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: ops
                .remove
                .iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|_| RewriteError::Header))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The copy of `req` for the shadow at `authority` (`host:port`, where it is sent).
    pub fn copy(
        &self,
        req: &HttpRequest,
        authority: &str,
        client: IpAddr,
    ) -> Result<Request<Full<Bytes>>, RewriteError> {
        let head = &req.head;
        let method = Method::from_bytes(head.method().unwrap_or("").as_bytes())
            .map_err(|_| RewriteError::RequestLine)?;
        let target = head.target().unwrap_or("/");
        let path = if target.starts_with('/') { target.to_owned() } else { absolute_path(target) };
        let uri: http::Uri =
            format!("http://{authority}{path}").parse().map_err(|_| RewriteError::RequestLine)?;
        let mut builder = Request::builder().method(method).uri(uri);
        if head.version() == 0 {
            builder = builder.version(http::Version::HTTP_10);
        }
        let mut chunked = false;
        let mut forwarded = false;
        let headers = builder.headers_mut().ok_or(RewriteError::RequestLine)?;
        for (name, value) in head.headers() {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| RewriteError::Header)?;
            if self.remove.contains(&name) || self.set.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let mut value = HeaderValue::from_bytes(value).map_err(|_| RewriteError::Header)?;
            if name == http::header::HOST {
                value = self.host_value(&value).ok_or(RewriteError::Header)?;
            } else if name == http::header::TRANSFER_ENCODING {
                chunked = true;
            } else if name.as_str() == "x-forwarded-for" && !forwarded {
                let appended = format!("{}, {client}", value.to_str().unwrap_or(""));
                value = HeaderValue::from_str(&appended).map_err(|_| RewriteError::Header)?;
                forwarded = true;
            }
            headers.append(name, value);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        if !forwarded {
            let value =
                HeaderValue::from_str(&client.to_string()).map_err(|_| RewriteError::Header)?;
            headers.append("x-forwarded-for", value);
        }
        // hyper re-frames the body: it needs the decoded bytes of a chunked body (and keeps
        // the Transfer-Encoding header, so the shadow sees chunked framing again).
        let body = if chunked {
            decode_chunked(&req.body).ok_or(RewriteError::Body)?
        } else {
            req.body.clone()
        };
        builder.body(Full::new(body)).map_err(|_| RewriteError::RequestLine)
    }

    fn host_value(&self, original: &HeaderValue) -> Option<HeaderValue> {
        match &self.host {
            HostRewrite::Keep => Some(original.clone()),
            HostRewrite::Literal(h) => HeaderValue::from_str(h).ok(),
            HostRewrite::ShadowSuffix => {
                HeaderValue::from_str(&shadow_host(original.to_str().ok()?)).ok()
            }
        }
    }
}

/// The path and query of an absolute-form target (`http://host/path?q`).
fn absolute_path(target: &str) -> String {
    match target.parse::<http::Uri>() {
        Ok(uri) => uri.path_and_query().map_or("/".into(), |p| p.as_str().to_owned()),
        Err(_) => "/".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_host_rule() {
        assert_eq!(shadow_host("httpbin:8000"), "httpbin-shadow:8000");
        assert_eq!(shadow_host("httpbin"), "httpbin-shadow");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
        assert_eq!(shadow_host("a.b.svc.cluster.local:9080"), "a.b.svc.cluster.local-shadow:9080");
    }
}
