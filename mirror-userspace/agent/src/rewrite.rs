//! Turning a captured request into the copy sent to a shadow: Host rewrite (Envoy's rule by
//! default), header edits, X-Forwarded-For. Method, target, header order and the body bytes
//! are kept, as far as RFC 9110 §5.3 gives order a meaning: the copy is built in an
//! [`http::HeaderMap`], which keeps the values of a repeated field in their order but groups
//! them at the field's first occurrence (`A: 1, B: 2, A: 3` goes out as `A: 1, A: 3, B: 2`).
//! The order of differing field names is not significant; the order of a field's values is.
use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::Full;

use mirror_http::{decode_chunked, RequestView, Version};

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

/// How the Host header of a copy is rewritten.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HostRewrite {
    /// Envoy's rule: `host:port` becomes `host-shadow:port`.
    #[default]
    ShadowSuffix,
    /// Keep the original Host.
    Keep,
    /// Use this Host.
    Literal(HeaderValue),
}

/// Istio's `headers.request`: header edits applied to every copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Replace (or add) these headers.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append these headers.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove these headers (for example Authorization, Cookie).
    pub remove: Vec<HeaderName>,
}

pub struct Rewriter {
    host: HostRewrite,
    edits: HeaderEdits,
}

impl Rewriter {
    pub fn new(host: HostRewrite, edits: HeaderEdits) -> Self {
        Self { host, edits }
    }

    /// The copy of a captured request (`req`, whose body as sent is `body`) for the shadow at
    /// `authority` (`host:port`, where it is sent).
    pub fn copy(
        &self,
        req: &impl RequestView,
        body: &Bytes,
        authority: &str,
        client: IpAddr,
    ) -> Result<Request<Full<Bytes>>, RewriteError> {
        let method =
            Method::from_bytes(req.method().as_bytes()).map_err(|_| RewriteError::RequestLine)?;
        let target = req.target();
        let path = if target.starts_with('/') { target.to_owned() } else { absolute_path(target) };
        let uri: http::Uri =
            format!("http://{authority}{path}").parse().map_err(|_| RewriteError::RequestLine)?;
        let mut builder = Request::builder().method(method).uri(uri);
        if req.version() == Version::Http10 {
            builder = builder.version(http::Version::HTTP_10);
        }
        let mut chunked = false;
        let mut forwarded = false;
        let mut failed = None;
        let headers = builder.headers_mut().ok_or(RewriteError::RequestLine)?;
        req.for_each_header(&mut |name, value| {
            if failed.is_none() {
                let header = self.header(name, value, client, &mut forwarded);
                match header {
                    Ok(Some((name, value))) => {
                        chunked |= name == http::header::TRANSFER_ENCODING;
                        headers.append(name, value);
                    }
                    Ok(None) => {}
                    Err(e) => failed = Some(e),
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        for (name, value) in &self.edits.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.edits.add {
            headers.append(name.clone(), value.clone());
        }
        if !forwarded {
            let value =
                HeaderValue::from_str(&client.to_string()).map_err(|_| RewriteError::Header)?;
            headers.append("x-forwarded-for", value);
        }
        // hyper re-frames the body: it needs the decoded bytes of a chunked body (and keeps
        // the Transfer-Encoding header, so the shadow sees chunked framing again).
        let body =
            if chunked { decode_chunked(body).ok_or(RewriteError::Body)? } else { body.clone() };
        builder.body(Full::new(body)).map_err(|_| RewriteError::RequestLine)
    }

    /// One captured header field as the copy carries it: removed or replaced by the edits
    /// (`None`), Host rewritten, the client appended to the first X-Forwarded-For.
    fn header(
        &self,
        name: &str,
        value: &[u8],
        client: IpAddr,
        forwarded: &mut bool,
    ) -> Result<Option<(HeaderName, HeaderValue)>, RewriteError> {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| RewriteError::Header)?;
        let edits = &self.edits;
        if edits.remove.contains(&name) || edits.set.iter().any(|(n, _)| *n == name) {
            return Ok(None);
        }
        let mut value = HeaderValue::from_bytes(value).map_err(|_| RewriteError::Header)?;
        if name == http::header::HOST {
            value = self.host_value(&value).ok_or(RewriteError::Header)?;
        } else if name.as_str() == "x-forwarded-for" && !*forwarded {
            let appended = format!("{}, {client}", value.to_str().unwrap_or(""));
            value = HeaderValue::from_str(&appended).map_err(|_| RewriteError::Header)?;
            *forwarded = true;
        }
        Ok(Some((name, value)))
    }

    fn host_value(&self, original: &HeaderValue) -> Option<HeaderValue> {
        match &self.host {
            HostRewrite::Keep => Some(original.clone()),
            HostRewrite::Literal(h) => Some(h.clone()),
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
    use mirror_flow::ReassemblyConfig;
    use mirror_http::{extractor, HttpConfig, HttpEvent, HttpRequest};
    use mirror_testkit::Conversation;

    fn captured(raw: &[u8]) -> HttpRequest {
        let mut c = Conversation::new(
            "10.0.0.1:999".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
            1,
            1,
        );
        let mut x = extractor(ReassemblyConfig::default(), HttpConfig::default());
        let mut events = Vec::new();
        for s in c.open().into_iter().chain(c.request(raw, 1448)) {
            x.push(&s, &mut events);
        }
        match events.pop() {
            Some(HttpEvent::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn names(r: &Request<Full<Bytes>>) -> Vec<String> {
        r.headers().iter().map(|(n, v)| format!("{n}={}", v.to_str().unwrap())).collect()
    }

    #[test]
    fn edits_keep_order_and_append_x_forwarded_for() {
        let req = captured(
            b"POST /p?q=1 HTTP/1.1\r\nHost: api:80\r\nAuthorization: x\r\nX-Forwarded-For: 1.2.3.4\r\nX-A: 1\r\nX-Set: old\r\nContent-Length: 2\r\n\r\nhi",
        );
        let edits = HeaderEdits {
            set: vec![(HeaderName::from_static("x-set"), HeaderValue::from_static("new"))],
            add: vec![(HeaderName::from_static("x-add"), HeaderValue::from_static("a"))],
            remove: vec![HeaderName::from_static("authorization")],
        };
        let r = Rewriter::new(HostRewrite::ShadowSuffix, edits);
        let copy =
            r.copy(&req.head, &req.body, "10.9.9.9:8080", "10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(copy.method(), "POST");
        assert_eq!(copy.uri(), "http://10.9.9.9:8080/p?q=1");
        assert_eq!(
            names(&copy),
            [
                "host=api-shadow:80",
                "x-forwarded-for=1.2.3.4, 10.0.0.1",
                "x-a=1",
                "content-length=2",
                "x-set=new",
                "x-add=a"
            ]
        );
    }

    /// RFC 9110 §5.3: the relative order of a repeated field's values is kept; the values
    /// are grouped at the field's first occurrence, and every other field keeps its place.
    #[test]
    fn repeated_fields_keep_their_value_order_and_others_their_place() {
        let req = captured(
            b"GET /h HTTP/1.1\r\nA: 1\r\nHost: h:80\r\nB: 2\r\nA: 3\r\nC: 4\r\nB: 5\r\nA: 6\r\nD: 7\r\n\r\n",
        );
        let r = Rewriter::new(HostRewrite::Keep, HeaderEdits::default());
        let copy = r.copy(&req.head, &req.body, "s:1", "10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            names(&copy),
            [
                "a=1",
                "a=3",
                "a=6",
                "host=h:80",
                "b=2",
                "b=5",
                "c=4",
                "d=7",
                "x-forwarded-for=10.0.0.1"
            ]
        );
        // The two rules, checked on their own: each name's values in the order sent...
        for name in ["a", "b"] {
            let sent: Vec<&[u8]> = req
                .head
                .headers()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
                .collect();
            let copied: Vec<&[u8]> =
                copy.headers().get_all(name).iter().map(|v| v.as_bytes()).collect();
            assert_eq!(copied, sent, "{name}");
        }
        // ...and the names in the order of their first occurrence.
        let mut first = Vec::new();
        for (n, _) in req.head.headers() {
            let n = n.to_ascii_lowercase();
            if !first.contains(&n) {
                first.push(n);
            }
        }
        first.push("x-forwarded-for".into());
        let keys: Vec<&str> = copy.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, first);
    }

    #[test]
    fn keep_and_literal_hosts_and_chunked_bodies() {
        let req = captured(b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        let keep = Rewriter::new(HostRewrite::Keep, HeaderEdits::default());
        let copy = keep.copy(&req.head, &req.body, "s:1", "::1".parse().unwrap()).unwrap();
        assert_eq!(copy.headers()["host"], "h");
        assert_eq!(copy.headers()["x-forwarded-for"], "::1");
        assert_eq!(copy.headers()["transfer-encoding"], "chunked");
        let canary = HostRewrite::Literal(HeaderValue::from_static("canary"));
        let literal = Rewriter::new(canary, HeaderEdits::default());
        let copy = literal.copy(&req.head, &req.body, "s:1", "::1".parse().unwrap()).unwrap();
        assert_eq!(copy.headers()["host"], "canary");
        let body = copy.into_body();
        let data = futures_body(body);
        assert_eq!(&data[..], b"abc");
    }

    fn futures_body(body: Full<Bytes>) -> Bytes {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(body.collect()).unwrap().to_bytes()
    }

    /// A request of another protocol, shaped like an HTTP/2 stream (`:authority` as host).
    struct Stream(Vec<(&'static str, &'static [u8])>);

    impl RequestView for Stream {
        fn method(&self) -> &str {
            "POST"
        }
        fn target(&self) -> &str {
            "/grpc.Svc/Call"
        }
        fn version(&self) -> Version {
            Version::Http2
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
        }
        fn for_each_header(&self, f: &mut dyn FnMut(&str, &[u8])) {
            self.0.iter().for_each(|(n, v)| f(n, v));
        }
    }

    /// Matching, sampling and rewriting read the view, not HTTP/1 bytes.
    #[test]
    fn a_request_view_of_another_protocol_goes_through_the_same_stages() {
        use crate::select::{MatchRule, RequestMatcher, Sampler, StringMatch};
        let stream = Stream(vec![("host", b"svc:50051"), ("content-type", b"application/grpc")]);
        let rule = MatchRule {
            methods: vec!["POST".into()],
            uri: Some(StringMatch::Prefix("/grpc.".into())),
            headers: vec![(
                "content-type".into(),
                StringMatch::regex("application/grpc.*").unwrap(),
            )],
        };
        assert!(RequestMatcher::new(vec![rule]).matches(&stream));
        let mut sampler = Sampler::new(Some("host".into()), Some(1));
        let first = sampler.sample(50.0, &stream);
        assert!((0..20).all(|_| sampler.sample(50.0, &stream) == first), "consistent by header");
        let r = Rewriter::new(HostRewrite::ShadowSuffix, HeaderEdits::default());
        let body = Bytes::from_static(b"\0\0\0\0\x02hi");
        let copy = r.copy(&stream, &body, "10.1.1.1:50051", "10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(copy.uri(), "http://10.1.1.1:50051/grpc.Svc/Call");
        assert_eq!(
            names(&copy),
            ["host=svc-shadow:50051", "content-type=application/grpc", "x-forwarded-for=10.0.0.1"]
        );
    }

    #[test]
    fn envoy_host_rule() {
        assert_eq!(shadow_host("httpbin:8000"), "httpbin-shadow:8000");
        assert_eq!(shadow_host("httpbin"), "httpbin-shadow");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
        assert_eq!(shadow_host("a.b.svc.cluster.local:9080"), "a.b.svc.cluster.local-shadow:9080");
    }
}
