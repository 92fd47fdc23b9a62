//! A JSON tree for comparing, cheaper than `serde_json::Value`: strings borrowed from the
//! body where they have no escapes, object members in a vector sorted by key (one sort per
//! object instead of a B-tree insert per member). Parsing was 70 % of a comparison with
//! `Value`. serde_json does the parsing (and its nesting limit still applies to untrusted
//! bodies); this is only the shape it builds.
use std::{borrow::Cow, fmt};

use serde::{
    de::{MapAccess, SeqAccess, Visitor},
    Deserialize, Deserializer,
};

#[derive(Clone, Debug, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    /// Numbers as serde_json reads them: non-negative integers, negative ones, others; so,
    /// as with `serde_json::Value`, 1 and 1.0 differ.
    UInt(u64),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Arr(Vec<Json<'a>>),
    /// Members sorted by key; of repeated keys the first is kept.
    Obj(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parses `bytes`, borrowing from them.
    pub fn parse(bytes: &'a [u8]) -> Result<Json<'a>, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The member `key` of an object.
    pub fn get(members: &'a [(Cow<'a, str>, Json<'a>)], key: &str) -> Option<&'a Json<'a>> {
        members.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok().map(|i| &members[i].1)
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::UInt(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Int(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        Ok(Json::Float(v))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Arr(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(Key(k)) = map.next_key()? {
            members.push((k, map.next_value()?));
        }
        // Stable: of repeated keys the first stays first, and dedup keeps it.
        members.sort_by(|a: &(Cow<str>, Json), b| a.0.cmp(&b.0));
        members.dedup_by(|later, first| later.0 == first.0);
        Ok(Json::Obj(members))
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_serde_json_with_sorted_members() {
        let text = br#"{"b": [1, -2, 1.5, "s\"q", null, true], "a": {"z": 0, "y": "x"}, "b": 9}"#;
        let j = Json::parse(text).unwrap();
        let Json::Obj(members) = &j else { panic!("{j:?}") };
        let keys: Vec<&str> = members.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["a", "b"], "sorted, the first of a repeated key kept");
        assert_eq!(
            Json::get(members, "b"),
            Some(&Json::Arr(vec![
                Json::UInt(1),
                Json::Int(-2),
                Json::Float(1.5),
                Json::Str("s\"q".into()),
                Json::Null,
                Json::Bool(true)
            ]))
        );
        assert!(matches!(Json::get(members, "a"), Some(Json::Obj(m)) if m[0].0 == "y"));
        assert!(Json::parse(b"{").is_err());
        let deep = "[".repeat(10_000);
        assert!(Json::parse(deep.as_bytes()).is_err(), "serde_json's nesting limit holds");
    }
}
