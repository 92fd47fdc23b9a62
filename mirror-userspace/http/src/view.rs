//! The request as the stages after framing see it, whatever its protocol: matching, sampling
//! and rewriting read a [`RequestView`], so an HTTP/2 stream can be mirrored by the same code
//! as an HTTP/1 request.
use crate::Head;

/// The protocol version of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
    Http2,
}

/// What matching, sampling and rewriting need to know about a request.
pub trait RequestView {
    fn method(&self) -> &str;
    /// The request target as sent: origin form (path and query) or absolute form.
    fn target(&self) -> &str;
    fn version(&self) -> Version;
    /// The first value of header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// Every header field in the order sent, names as sent (`:authority` is `host`).
    fn for_each_header(&self, f: &mut dyn FnMut(&str, &[u8]));
}

impl RequestView for Head {
    fn method(&self) -> &str {
        Head::method(self).unwrap_or("")
    }

    fn target(&self) -> &str {
        Head::target(self).unwrap_or("")
    }

    fn version(&self) -> Version {
        if Head::version(self) == 0 {
            Version::Http10
        } else {
            Version::Http11
        }
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        Head::header(self, name)
    }

    fn for_each_header(&self, f: &mut dyn FnMut(&str, &[u8])) {
        for (name, value) in self.headers() {
            f(name, value);
        }
    }
}
