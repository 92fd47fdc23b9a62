//! Which requests are mirrored: match rules (Istio's `match`) and sampling.
use regex::Regex;

use mirror_http::RequestView;

/// A string condition, as Istio's StringMatch.
#[derive(Clone, Debug)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// Anchored: the whole value must match, as Istio's RE2 full match.
    Regex(Regex),
}

impl StringMatch {
    /// A regex condition on the whole value (anchored here).
    pub fn regex(pattern: &str) -> Result<StringMatch, regex::Error> {
        Ok(StringMatch::Regex(Regex::new(&format!("^(?:{pattern})$"))?))
    }

    fn holds(&self, value: &[u8]) -> bool {
        let Ok(value) = std::str::from_utf8(value) else {
            return false;
        };
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// One match rule: every condition given must hold.
#[derive(Clone, Debug, Default)]
pub struct MatchRule {
    /// Request methods, upper case (any of them; none: any method).
    pub methods: Vec<String>,
    /// The request target (path and query).
    pub uri: Option<StringMatch>,
    /// Header conditions by header name.
    pub headers: Vec<(String, StringMatch)>,
}

impl MatchRule {
    fn holds(&self, req: &impl RequestView) -> bool {
        let method = req.method();
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self.uri.as_ref().is_none_or(|c| c.holds(req.target().as_bytes()))
            && self.headers.iter().all(|(name, c)| req.header(name).is_some_and(|v| c.holds(v)))
    }
}

/// The match rules (Istio's `match`): any rule matches; no rules means every request
/// matches.
pub struct RequestMatcher {
    rules: Vec<MatchRule>,
}

impl RequestMatcher {
    pub fn new(rules: Vec<MatchRule>) -> Self {
        Self { rules }
    }

    pub fn matches(&self, req: &impl RequestView) -> bool {
        self.rules.is_empty() || self.rules.iter().any(|r| r.holds(req))
    }
}

/// Per-request sampling, optionally consistent by the hash of a header's value.
pub struct Sampler {
    by_header: Option<String>,
    rng: fastrand::Rng,
}

impl Sampler {
    pub fn new(by_header: Option<String>, seed: Option<u64>) -> Self {
        let rng = seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        Self { by_header, rng }
    }

    /// Whether this request is mirrored at `percent` (0..=100).
    pub fn sample(&mut self, percent: f64, req: &impl RequestView) -> bool {
        if percent >= 100.0 {
            return true;
        }
        if percent <= 0.0 {
            return false;
        }
        let key = self.by_header.as_deref().and_then(|name| req.header(name));
        let unit = match key {
            // The same value always lands at the same point of [0, 1).
            Some(value) => (key_hash(value) >> 11) as f64 / (1u64 << 53) as f64,
            None => self.rng.f64(),
        };
        unit * 100.0 < percent
    }
}

/// FNV-1a with MurmurHash3's 64-bit finaliser: FNV alone leaves the high bits of short,
/// similar keys ("user1", "user2"...) poorly mixed, which would bias the sample.
fn key_hash(data: &[u8]) -> u64 {
    let mut h = data
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use mirror_http::Head;

    use super::*;

    fn head(text: &str) -> Head {
        let (len, parts) = Head::parse_request(text.as_bytes()).unwrap().unwrap();
        parts.with_bytes(Bytes::copy_from_slice(&text.as_bytes()[..len]))
    }

    #[test]
    fn rules_are_ored_and_conditions_anded() {
        let m = RequestMatcher::new(vec![
            MatchRule {
                methods: vec!["POST".into()],
                uri: Some(StringMatch::Prefix("/api/".into())),
                ..MatchRule::default()
            },
            MatchRule {
                headers: vec![("x-canary".into(), StringMatch::regex("y.s").unwrap())],
                ..MatchRule::default()
            },
        ]);
        assert!(m.matches(&head("POST /api/x HTTP/1.1\r\n\r\n")));
        assert!(!m.matches(&head("GET /api/x HTTP/1.1\r\n\r\n")));
        assert!(!m.matches(&head("POST /other HTTP/1.1\r\n\r\n")));
        assert!(m.matches(&head("GET / HTTP/1.1\r\nX-Canary: yes\r\n\r\n")));
        assert!(!m.matches(&head("GET / HTTP/1.1\r\nX-Canary: yes!\r\n\r\n")), "anchored");
        assert!(RequestMatcher::new(vec![]).matches(&head("GET / HTTP/1.1\r\n\r\n")));
    }

    #[test]
    fn consistent_sampling_by_header() {
        let mut s = Sampler::new(Some("x-user".into()), Some(1));
        let users: Vec<Head> =
            (0..200).map(|u| head(&format!("GET / HTTP/1.1\r\nX-User: user{u}\r\n\r\n"))).collect();
        let first: Vec<bool> = users.iter().map(|h| s.sample(30.0, h)).collect();
        let again: Vec<bool> = users.iter().map(|h| s.sample(30.0, h)).collect();
        assert_eq!(first, again, "a user is always in or always out");
        let n = first.iter().filter(|&&b| b).count();
        // Binomial(200, 0.3): mean 60, sd 6.5.
        assert!((35..=85).contains(&n), "{n} of 200 users sampled at 30 %");
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
        fn version(&self) -> mirror_http::Version {
            mirror_http::Version::Http2
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
        }
        fn for_each_header(&self, f: &mut dyn FnMut(&str, &[u8])) {
            self.0.iter().for_each(|(n, v)| f(n, v));
        }
    }

    /// Matching and sampling read the view, not HTTP/1 bytes.
    #[test]
    fn a_request_view_of_another_protocol_is_matched_and_sampled() {
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
    }
}
