//! Differences between two answers, field by field, with Diffy's kinds.
//!
//! Fields are named by path: `status`, `header.NAME` (lower case), `body` for the body as a
//! whole and `body/a/b` for a JSON body's members (JSON pointer tokens, `~0` and `~1`
//! escaped; `*` for the elements of an array, which are all one field as in Diffy). Arrays
//! follow Diffy: the same elements in another order are an `array_order` difference, arrays
//! of one length otherwise differ element by element, arrays of different lengths by size.
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::{body::Body, ignore::IgnoreRules, json::Json};

/// What kind of difference a field shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The same type, another value.
    Primitive,
    /// Another type (a number became a string; a JSON body became text).
    Type,
    /// In the first answer, not in the second.
    Missing,
    /// In the second answer, not in the first.
    Extra,
    /// Arrays of different lengths.
    ArraySize,
    /// The same elements in another order.
    ArrayOrder,
    /// A line of a text body that differs (field `body/line/N`, counted from 1), or text
    /// bodies of different line counts (field `body/lines`).
    Text,
    /// Other bodies whose length or hash differ.
    Bytes,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Primitive => "primitive",
            Kind::Type => "type",
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::ArraySize => "array_size",
            Kind::ArrayOrder => "array_order",
            Kind::Text => "text",
            Kind::Bytes => "bytes",
        }
    }
}

/// One difference: a field and its kind (the key counters are kept by).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FieldDiff {
    pub field: String,
    pub kind: Kind,
}

/// Appends the differences between bodies `a` and `b` to `out`.
pub(crate) fn bodies(a: &Body<'_>, b: &Body<'_>, rules: &IgnoreRules, out: &mut Vec<FieldDiff>) {
    if rules.ignores_field("body") {
        return;
    }
    let whole = |kind| FieldDiff { field: "body".into(), kind };
    match (a, b) {
        (Body::Json(x), Body::Json(y)) => {
            let mut path = String::from("body");
            values(&mut path, x, y, rules, out);
        }
        (Body::Text(x), Body::Text(y)) if x != y => lines(x, y, rules, out),
        (Body::Binary { .. }, Body::Binary { .. }) if a != b => out.push(whole(Kind::Bytes)),
        (Body::Empty, Body::Empty)
        | (Body::Text(_), Body::Text(_))
        | (Body::Binary { .. }, Body::Binary { .. }) => {}
        (Body::Empty, _) => out.push(whole(Kind::Extra)),
        (_, Body::Empty) => out.push(whole(Kind::Missing)),
        _ => out.push(whole(Kind::Type)),
    }
}

/// Text bodies by lines: a line that differs is a field of its own (`body/line/N`), so a
/// line that varies (a timestamp) is noise on its own and does not hide another; bodies of
/// different line counts differ as a whole (`body/lines`), as Diffy's arrays of another
/// size do.
fn lines(a: &str, b: &str, rules: &IgnoreRules, out: &mut Vec<FieldDiff>) {
    let (x, y) = (a.lines().count(), b.lines().count());
    if x != y {
        if !rules.ignores_field("body/lines") {
            out.push(FieldDiff { field: "body/lines".into(), kind: Kind::Text });
        }
        return;
    }
    for (i, (l, r)) in a.lines().zip(b.lines()).enumerate() {
        if l != r && !rules.ignores_value(l, r) {
            let field = format!("body/line/{}", i + 1);
            if !rules.ignores_field(&field) {
                out.push(FieldDiff { field, kind: Kind::Text });
            }
        }
    }
}

/// JSON values at `path`; `path` is restored before returning.
fn values(
    path: &mut String,
    a: &Json<'_>,
    b: &Json<'_>,
    rules: &IgnoreRules,
    out: &mut Vec<FieldDiff>,
) {
    let mut push = |kind| out.push(FieldDiff { field: path.clone(), kind });
    let number = |j: &Json<'_>| matches!(j, Json::UInt(_) | Json::Int(_) | Json::Float(_));
    match (a, b) {
        (Json::Obj(x), Json::Obj(y)) => objects(path, x, y, rules, out),
        (Json::Arr(x), Json::Arr(y)) => arrays(path, x, y, rules, out),
        (Json::Str(x), Json::Str(y)) => {
            if x != y && !rules.ignores_value(x, y) {
                push(Kind::Primitive)
            }
        }
        (Json::Bool(_), Json::Bool(_)) => {
            if a != b {
                push(Kind::Primitive)
            }
        }
        (x, y) if number(x) && number(y) => {
            if a != b {
                push(Kind::Primitive)
            }
        }
        (Json::Null, Json::Null) => {}
        _ => push(Kind::Type),
    }
}

/// Members of two objects, both sorted by key: one merge walk.
fn objects(
    path: &mut String,
    a: &[(Cow<'_, str>, Json<'_>)],
    b: &[(Cow<'_, str>, Json<'_>)],
    rules: &IgnoreRules,
    out: &mut Vec<FieldDiff>,
) {
    let len = path.len();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.0.cmp(&y.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let key = if order.is_gt() { &b[j].0 } else { &a[i].0 };
        push_token(path, key);
        if !rules.ignores_field(path) {
            match order {
                std::cmp::Ordering::Equal => values(path, &a[i].1, &b[j].1, rules, out),
                std::cmp::Ordering::Less => {
                    out.push(FieldDiff { field: path.clone(), kind: Kind::Missing })
                }
                std::cmp::Ordering::Greater => {
                    out.push(FieldDiff { field: path.clone(), kind: Kind::Extra })
                }
            }
        }
        path.truncate(len);
        i += usize::from(!order.is_gt());
        j += usize::from(!order.is_lt());
    }
}

fn arrays(
    path: &mut String,
    a: &[Json<'_>],
    b: &[Json<'_>],
    rules: &IgnoreRules,
    out: &mut Vec<FieldDiff>,
) {
    if a.len() != b.len() {
        out.push(FieldDiff { field: path.clone(), kind: Kind::ArraySize });
        return;
    }
    // Most arrays are equal or differ in a few elements: compare in place first, and tell a
    // reordering from changed elements by a structural hash of the mismatched ones only.
    let mismatched: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    if mismatched.is_empty() {
        return;
    }
    let mut x: Vec<u64> = mismatched.iter().map(|&i| hash_value(&a[i])).collect();
    let mut y: Vec<u64> = mismatched.iter().map(|&i| hash_value(&b[i])).collect();
    x.sort_unstable();
    y.sort_unstable();
    if x == y {
        out.push(FieldDiff { field: path.clone(), kind: Kind::ArrayOrder });
        return;
    }
    let len = path.len();
    path.push_str("/*");
    if !rules.ignores_field(path) {
        // Every element is the same field: each (field, kind) is reported once.
        let start = out.len();
        for i in mismatched {
            values(path, &a[i], &b[i], rules, out);
        }
        dedup_from(out, start);
    }
    path.truncate(len);
}

/// Removes repeated differences appended since `start` (arrays of a few elements: a scan).
fn dedup_from(out: &mut Vec<FieldDiff>, start: usize) {
    let mut i = start + 1;
    while i < out.len() {
        if out[start..i].contains(&out[i]) {
            out.remove(i);
        } else {
            i += 1;
        }
    }
}

/// A structural hash of a JSON value (FNV-1a over a canonical walk; object members in key
/// order, which the tree keeps). Two arrays whose element hashes agree are taken as equal:
/// a collision (one in 2^64) would hide a difference.
fn hash_value(v: &Json<'_>) -> u64 {
    fn mix(h: u64, bytes: &[u8]) -> u64 {
        bytes.iter().fold(h, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
    }
    fn walk(h: u64, v: &Json<'_>) -> u64 {
        match v {
            Json::Null => mix(h, b"n"),
            Json::Bool(b) => mix(h, if *b { b"t" } else { b"f" }),
            Json::UInt(n) => mix(mix(h, b"u"), &n.to_le_bytes()),
            Json::Int(n) => mix(mix(h, b"i"), &n.to_le_bytes()),
            Json::Float(f) => mix(mix(h, b"f"), &f.to_bits().to_le_bytes()),
            Json::Str(s) => mix(mix(h, b"\""), s.as_bytes()),
            Json::Arr(items) => mix(items.iter().fold(mix(h, b"["), walk), b"]"),
            Json::Obj(m) => {
                let h = m
                    .iter()
                    .fold(mix(h, b"{"), |h, (k, v)| walk(mix(mix(h, k.as_bytes()), b":"), v));
                mix(h, b"}")
            }
        }
    }
    walk(0xcbf2_9ce4_8422_2325, v)
}

/// Appends `/token` with `~` and `/` escaped as in a JSON pointer.
fn push_token(path: &mut String, token: &str) {
    path.push('/');
    for c in token.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(a: &str, b: &str) -> Vec<(String, Kind)> {
        let mut out = Vec::new();
        let (a, b) = (Json::parse(a.as_bytes()).unwrap(), Json::parse(b.as_bytes()).unwrap());
        bodies(&Body::Json(a), &Body::Json(b), &IgnoreRules::default(), &mut out);
        let mut v: Vec<_> = out.into_iter().map(|d| (d.field, d.kind)).collect();
        v.sort();
        v
    }

    fn f(field: &str, kind: Kind) -> (String, Kind) {
        (field.to_string(), kind)
    }

    #[test]
    fn diffys_kinds() {
        let a = r#"{"n": 1, "s": "x", "t": 1, "gone": true, "arr": [1, 2, 3], "ord": [1, 2],
                    "nest": {"a/b": {"c": null}}, "same": [{"k": 1}], "f": 1.5}"#;
        let b = r#"{"n": 2, "s": "x", "t": "1", "new": 0, "arr": [1, 2], "ord": [2, 1],
                    "nest": {"a/b": {"c": 0}}, "same": [{"k": 1}], "f": -1}"#;
        assert_eq!(
            diff(a, b),
            vec![
                f("body/arr", Kind::ArraySize),
                f("body/f", Kind::Primitive),
                f("body/gone", Kind::Missing),
                f("body/n", Kind::Primitive),
                f("body/nest/a~1b/c", Kind::Type),
                f("body/new", Kind::Extra),
                f("body/ord", Kind::ArrayOrder),
                f("body/t", Kind::Type),
            ]
        );
    }

    #[test]
    fn array_elements_are_one_field() {
        let a = r#"[{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 3, "v": "c"}]"#;
        let b = r#"[{"id": 1, "v": "x"}, {"id": 2, "v": "y"}, {"id": 3}]"#;
        assert_eq!(diff(a, b), vec![f("body/*/v", Kind::Primitive), f("body/*/v", Kind::Missing)]);
        assert!(diff(r#"{"k": [1, 2]}"#, r#"{"k": [1, 2]}"#).is_empty());
        assert!(diff(r#"{"a": 1, "b": 2}"#, r#"{"b": 2, "a": 1}"#).is_empty(), "key order");
    }

    #[test]
    fn bodies_of_other_types() {
        let rules = IgnoreRules::default();
        let run = |a: &Body, b: &Body| {
            let mut out = Vec::new();
            bodies(a, b, &rules, &mut out);
            out.into_iter().map(|d| d.kind).collect::<Vec<_>>()
        };
        let text = |s: &'static str| Body::Text(s);
        assert_eq!(run(&text("a\nb"), &text("a\nc")), vec![Kind::Text]);
        let mut out = Vec::new();
        bodies(&text("<p>\n10:00\n<b>x"), &text("<p>\n10:01\n<b>y"), &rules, &mut out);
        let fields: Vec<&str> = out.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["body/line/2", "body/line/3"], "each differing line its own field");
        out.clear();
        bodies(&text("a\nb"), &text("a"), &rules, &mut out);
        assert_eq!(out[0].field, "body/lines");
        assert_eq!(run(&text("a"), &Body::Json(Json::UInt(1))), vec![Kind::Type]);
        assert_eq!(run(&Body::Empty, &text("a")), vec![Kind::Extra]);
        assert_eq!(run(&text("a"), &Body::Empty), vec![Kind::Missing]);
        let bin = |len, hash| Body::Binary { len, hash };
        assert_eq!(run(&bin(3, 1), &bin(3, 2)), vec![Kind::Bytes]);
        assert!(run(&bin(3, 1), &bin(3, 1)).is_empty());
    }
}
