//! What the comparison leaves out (diffy #33, #59): fields by path, headers by name or
//! pattern, and values by a pattern both sides match.
use regex::Regex;
use serde::{Deserialize, Serialize};

/// Headers never compared: they differ between any two answers (Date), describe the
/// connection rather than the answer (hop-by-hop), or the encoding bodies are compared
/// without (Content-Length, since bodies are compared decoded).
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// The rules as written (config, API, store): `fields` are paths as the comparison names
/// them (`body/user/*/id`, also written `user.*.id`), `*` standing for one segment and `**`
/// for any number; `headers` are names or `/regex/`; `values` are regexes a differing value
/// must match on both sides to be ignored (timestamps, ids).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoreSpec {
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub values: Vec<String>,
}

impl IgnoreSpec {
    /// Adds the rules of `more` not already here.
    pub fn add(&mut self, more: &IgnoreSpec) {
        for (mine, theirs) in [
            (&mut self.fields, &more.fields),
            (&mut self.headers, &more.headers),
            (&mut self.values, &more.values),
        ] {
            for rule in theirs {
                if !mine.contains(rule) {
                    mine.push(rule.clone());
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.headers.is_empty() && self.values.is_empty()
    }
}

/// A rule that cannot be one, with the offending text.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error("ignore.headers: {0:?}: {1}")]
    Header(String, regex::Error),
    #[error("ignore.values: {0:?}: {1}")]
    Value(String, regex::Error),
    #[error("ignore.fields: {0:?}: an empty path")]
    Field(String),
}

/// The compiled rules.
#[derive(Clone, Debug, Default)]
pub struct IgnoreRules {
    spec: IgnoreSpec,
    fields: Vec<Vec<String>>,
    header_names: Vec<String>,
    header_patterns: Vec<Regex>,
    values: Vec<Regex>,
}

impl IgnoreRules {
    pub fn new(spec: IgnoreSpec) -> Result<IgnoreRules, IgnoreError> {
        let mut rules = IgnoreRules::default();
        for f in &spec.fields {
            let segments = field_segments(f);
            if segments.is_empty() {
                return Err(IgnoreError::Field(f.clone()));
            }
            rules.fields.push(segments);
        }
        for h in &spec.headers {
            match h.strip_prefix('/').and_then(|r| r.strip_suffix('/')) {
                Some(re) => rules.header_patterns.push(
                    Regex::new(&format!("(?i){re}"))
                        .map_err(|e| IgnoreError::Header(h.clone(), e))?,
                ),
                None => rules.header_names.push(h.to_ascii_lowercase()),
            }
        }
        for v in &spec.values {
            rules.values.push(Regex::new(v).map_err(|e| IgnoreError::Value(v.clone(), e))?);
        }
        rules.spec = spec;
        Ok(rules)
    }

    pub fn spec(&self) -> &IgnoreSpec {
        &self.spec
    }

    /// These rules and `more` (rules already present are not repeated); on an error nothing
    /// changes.
    pub fn with(&self, more: &IgnoreSpec) -> Result<IgnoreRules, IgnoreError> {
        let mut spec = self.spec.clone();
        spec.add(more);
        IgnoreRules::new(spec)
    }

    /// Whether header `name` (lower case) is left out.
    pub fn ignores_header(&self, name: &str) -> bool {
        DEFAULT_IGNORED_HEADERS.contains(&name)
            || self.header_names.iter().any(|n| n == name)
            || self.header_patterns.iter().any(|p| p.is_match(name))
    }

    /// Whether the field at `path` (and everything under it) is left out.
    pub fn ignores_field(&self, path: &str) -> bool {
        if self.fields.is_empty() {
            return false;
        }
        // Called for every JSON member once rules exist: the path is walked, not collected.
        self.fields.iter().any(|rule| matches(rule, path.split('/')))
    }

    /// Whether two differing values both match a value rule.
    pub fn ignores_value(&self, a: &str, b: &str) -> bool {
        self.values.iter().any(|r| r.is_match(a) && r.is_match(b))
    }
}

/// A written path as segments of the comparison's naming: `body/a/*` stays, `a.*.b` and
/// `/a/*/b` (a JSON pointer into the body) become `body/a/*/b`.
fn field_segments(text: &str) -> Vec<String> {
    let text = text.trim();
    let parts: Vec<&str> = if text.contains('/') {
        text.trim_start_matches('/').split('/').collect()
    } else {
        text.split('.').collect()
    };
    let parts: Vec<String> =
        parts.into_iter().filter(|p| !p.is_empty()).map(String::from).collect();
    match parts.first().map(String::as_str) {
        None => Vec::new(),
        Some("body" | "status" | "**") => parts,
        Some(h) if h.starts_with("header") => parts,
        Some(_) => std::iter::once("body".to_string()).chain(parts).collect(),
    }
}

/// Whether `rule` matches a prefix of `path` (a rule on a field covers what lies under it).
fn matches(rule: &[String], mut path: std::str::Split<'_, char>) -> bool {
    match rule.split_first() {
        None => true,
        Some((first, rest)) if first == "**" => loop {
            // `**` takes none, one, two... of the remaining segments.
            if matches(rest, path.clone()) {
                return true;
            }
            if path.next().is_none() {
                return false;
            }
        },
        Some((first, rest)) => match path.next() {
            Some(p) if first == "*" || first == p => matches(rest, path),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(fields: &[&str], headers: &[&str], values: &[&str]) -> IgnoreRules {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        IgnoreRules::new(IgnoreSpec { fields: s(fields), headers: s(headers), values: s(values) })
            .unwrap()
    }

    #[test]
    fn fields_by_path_with_wildcards_in_every_spelling() {
        let r = rules(&["/meta/requestId", "items.*.updated", "body/**/etag"], &[], &[]);
        assert!(r.ignores_field("body/meta/requestId"));
        assert!(r.ignores_field("body/meta/requestId/deep"), "what lies under");
        assert!(!r.ignores_field("body/meta"));
        assert!(r.ignores_field("body/items/*/updated"));
        assert!(r.ignores_field("body/a/b/etag"));
        assert!(r.ignores_field("body/etag"));
        assert!(!r.ignores_field("body/items/*/created"));
    }

    #[test]
    fn headers_by_name_or_pattern_and_values_by_pattern() {
        let r = rules(&[], &["X-Request-Id", "/^x-trace-/"], &[r"^\d{4}-\d\d-\d\dT"]);
        assert!(r.ignores_header("x-request-id"));
        assert!(r.ignores_header("x-trace-span"));
        assert!(r.ignores_header("date"));
        assert!(!r.ignores_header("content-type"));
        assert!(r.ignores_value("2026-12-04T10:00:00Z", "2026-12-05T11:00:00Z"));
        assert!(!r.ignores_value("2026-12-04T10:00:00Z", "yesterday"));
    }

    #[test]
    fn bad_rules_name_what_is_wrong() {
        let bad = |spec| IgnoreRules::new(spec).unwrap_err().to_string();
        let spec = IgnoreSpec { values: vec!["(".into()], ..Default::default() };
        assert!(bad(spec).starts_with("ignore.values: \"(\""));
        let spec = IgnoreSpec { headers: vec!["/[/".into()], ..Default::default() };
        assert!(bad(spec).starts_with("ignore.headers"));
        let spec = IgnoreSpec { fields: vec!["/".into()], ..Default::default() };
        assert!(bad(spec).starts_with("ignore.fields"));
    }
}
