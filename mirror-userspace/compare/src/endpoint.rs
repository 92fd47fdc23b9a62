//! Endpoints: which requests are counted together.
//!
//! Diffy groups by a header the service sets (its users asked for grouping without one:
//! diffy #30, #49). Here an endpoint is the method and a path template: the first configured
//! template that matches (`/users/{id}/orders`), otherwise the path with its identifiers
//! collapsed (all-digit segments to `{n}`, UUIDs to `{uuid}`, long hex strings to `{hex}`),
//! the query left out.

/// A configured path template: literal segments and `{name}` placeholders, each matching one
/// segment; a final `{*}` matches the rest of the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
    Rest,
}

/// A template that cannot be one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("endpoint template {0:?}: {1}")]
pub struct TemplateError(pub String, pub &'static str);

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let bad = |why| TemplateError(text.to_string(), why);
        let Some(path) = text.strip_prefix('/') else { return Err(bad("must start with /")) };
        let parts: Vec<&str> = if path.is_empty() { Vec::new() } else { path.split('/').collect() };
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "{*}" if i + 1 == parts.len() => Segment::Rest,
                "{*}" => return Err(bad("{*} may only end a template")),
                p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => Segment::Any,
                p if p.contains(['{', '}', '?']) => {
                    return Err(bad("a segment is a literal or {name}"))
                }
                p => Segment::Literal(p.to_string()),
            });
        }
        Ok(Template { text: text.to_string(), segments })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn matches(&self, path: &str) -> bool {
        let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Rest, _) => return true,
                (Segment::Any, Some(p)) if !p.is_empty() => {}
                (Segment::Literal(l), Some(p)) if l == p => {}
                _ => return false,
            }
        }
        parts.next().is_none_or(|p| p.is_empty() && self.segments.is_empty())
    }
}

/// Names the endpoint of a request.
#[derive(Clone, Debug, Default)]
pub struct EndpointNamer {
    templates: Vec<Template>,
}

impl EndpointNamer {
    pub fn new(templates: Vec<Template>) -> Self {
        Self { templates }
    }

    /// `METHOD /template` or `METHOD /collapsed/path`.
    pub fn name(&self, method: &str, target: &str) -> String {
        let path = path_of(target);
        if let Some(t) = self.templates.iter().find(|t| t.matches(path)) {
            return format!("{method} {}", t.text);
        }
        let mut out = String::with_capacity(method.len() + 1 + path.len());
        out.push_str(method);
        out.push(' ');
        for part in path.split('/').skip(1) {
            out.push('/');
            out.push_str(collapse(part));
        }
        if !path.starts_with('/') || path == "/" {
            out.truncate(method.len() + 1);
            out.push('/');
        }
        out
    }
}

/// The path of a request target: origin form without the query; the path of an absolute
/// form; `*` stays itself.
fn path_of(target: &str) -> &str {
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    target.split(['?', '#']).next().unwrap_or(target)
}

/// An identifier segment's placeholder, or the segment itself.
fn collapse(segment: &str) -> &str {
    let b = segment.as_bytes();
    if !b.is_empty() && b.iter().all(u8::is_ascii_digit) {
        "{n}"
    } else if is_uuid(b) {
        "{uuid}"
    } else if b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit) {
        "{hex}"
    } else {
        segment
    }
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_collapse_and_queries_go() {
        let n = EndpointNamer::default();
        assert_eq!(n.name("GET", "/users/42/orders?page=2"), "GET /users/{n}/orders");
        assert_eq!(n.name("GET", "/o/123e4567-e89b-12d3-a456-426614174000"), "GET /o/{uuid}");
        assert_eq!(n.name("GET", "/blob/0123456789abcdef0123"), "GET /blob/{hex}");
        assert_eq!(n.name("GET", "/blob/cafe"), "GET /blob/cafe");
        assert_eq!(n.name("GET", "/"), "GET /");
        assert_eq!(n.name("OPTIONS", "*"), "OPTIONS /");
        assert_eq!(n.name("GET", "http://h:8000/a/7?x"), "GET /a/{n}");
    }

    #[test]
    fn templates_win_in_order() {
        let t = |s| Template::parse(s).unwrap();
        let n = EndpointNamer::new(vec![t("/users/{id}"), t("/static/{*}"), t("/")]);
        assert_eq!(n.name("GET", "/users/alice"), "GET /users/{id}");
        assert_eq!(n.name("GET", "/users/alice/orders"), "GET /users/alice/orders");
        assert_eq!(n.name("GET", "/static/css/site.css"), "GET /static/{*}");
        assert_eq!(n.name("GET", "/?q=1"), "GET /");
        assert!(Template::parse("users").is_err());
        assert!(Template::parse("/{*}/x").is_err());
        assert!(Template::parse("/a{b").is_err());
    }
}
