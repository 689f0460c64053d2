//! A JSON object (a chat request body) kept as the client's bytes, with
//! where each top-level field's value lies: reading a field parses only that
//! field, and rewriting one copies every other byte for byte. A 20 MiB body
//! then costs about 20 MiB, where a `serde_json::Value` tree of the same
//! bytes (`[0,0,0,…]`) costs twenty times that. Counting what a value holds
//! ([`JsonStats`]) walks it without building anything.

use bytes::Bytes;
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;
use std::ops::Range;

/// A JSON object as its bytes and the spans of its top-level values.
#[derive(Clone)]
pub struct RawObject {
    bytes: Bytes,
    fields: Vec<Field>,
}

#[derive(Clone)]
struct Field {
    key: String,
    value: FieldValue,
}

#[derive(Clone)]
enum FieldValue {
    /// Where the value lies in `bytes`.
    Span(Range<usize>),
    /// A value set since (JSON text).
    Set(String),
}

/// Why a body is not a JSON object we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RawObjectError {
    #[error("request body must be a JSON object")]
    NotAnObject,
    #[error("request body is not valid JSON")]
    Invalid,
    /// Readers disagree on which of two equal keys counts (the gateway
    /// might check one model and the upstream use the other).
    #[error("field {0:?} is given twice")]
    Duplicate(String),
}

impl fmt::Debug for RawObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.fields.iter().map(|f| f.key.as_str()).collect();
        write!(f, "RawObject({} bytes, fields {keys:?})", self.bytes.len())
    }
}

impl RawObject {
    /// Reads `bytes` as one JSON object, keeping them.
    pub fn parse(bytes: Bytes) -> Result<Self, RawObjectError> {
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(RawObjectError::NotAnObject);
        }
        let entries: Entries<'_> =
            serde_json::from_slice(&bytes).map_err(|_| RawObjectError::Invalid)?;
        let base = bytes.as_ptr() as usize;
        let mut seen = std::collections::HashSet::new();
        let mut fields = Vec::with_capacity(entries.0.len());
        for (key, raw) in entries.0 {
            if !seen.insert(key.clone()) {
                return Err(RawObjectError::Duplicate(key));
            }
            let start = raw.get().as_ptr() as usize - base;
            let value = FieldValue::Span(start..start + raw.get().len());
            fields.push(Field { key, value });
        }
        Ok(Self { bytes, fields })
    }

    /// The JSON text of field `key`, if present.
    pub fn raw(&self, key: &str) -> Option<&str> {
        let field = self.fields.iter().find(|f| f.key == key)?;
        Some(match &field.value {
            // The span came from a parse of these bytes: valid UTF-8.
            FieldValue::Span(span) => std::str::from_utf8(&self.bytes[span.clone()]).unwrap_or(""),
            FieldValue::Set(json) => json,
        })
    }

    /// Field `key` read as a `T`: `None` if absent, `Some(Err)` if it is
    /// not a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<Result<T, serde_json::Error>> {
        self.raw(key).map(serde_json::from_str)
    }

    /// Sets field `key` to the JSON text `json` (in place if present).
    pub fn set(&mut self, key: &str, json: String) {
        match self.fields.iter_mut().find(|f| f.key == key) {
            Some(field) => field.value = FieldValue::Set(json),
            None => self.fields.push(Field {
                key: key.to_owned(),
                value: FieldValue::Set(json),
            }),
        }
    }

    /// The object as JSON bytes: unchanged fields exactly as received, in
    /// their order, then fields added since.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_segments().concat()
    }

    /// [`Self::to_bytes`] as pieces: unchanged values are slices of the
    /// received bytes (shared, not copied), the rest small new buffers.
    pub fn to_segments(&self) -> Vec<Bytes> {
        let mut segments = Vec::with_capacity(self.fields.len() * 2 + 1);
        let mut pending = Vec::from(&b"{"[..]);
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                pending.push(b',');
            }
            pending.extend_from_slice(
                serde_json::to_string(&field.key)
                    .unwrap_or_default()
                    .as_bytes(),
            );
            pending.push(b':');
            match &field.value {
                FieldValue::Span(span) => {
                    segments.push(Bytes::from(std::mem::take(&mut pending)));
                    segments.push(self.bytes.slice(span.clone()));
                }
                FieldValue::Set(json) => pending.extend_from_slice(json.as_bytes()),
            }
        }
        pending.push(b'}');
        segments.push(Bytes::from(pending));
        segments
    }

    /// The object as a `Value` tree, for translations that need one; call
    /// [`Self::stats`] first to bound what it costs.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        let mut map = serde_json::Map::new();
        for field in &self.fields {
            let value = serde_json::from_str(self.raw(&field.key).unwrap_or("null"))?;
            map.insert(field.key.clone(), value);
        }
        Ok(serde_json::Value::Object(map))
    }

    /// What the whole object holds.
    pub fn stats(&self) -> Result<JsonStats, serde_json::Error> {
        let mut total = JsonStats::default();
        for field in &self.fields {
            let one = JsonStats::of(self.raw(&field.key).unwrap_or("null"))?;
            total.values = total.values.saturating_add(one.values);
            total.string_bytes = total.string_bytes.saturating_add(one.string_bytes);
        }
        Ok(total)
    }
}

/// The entries of a JSON object in their order, values unparsed.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Entries<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for EntriesVisitor<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<'a>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(EntriesVisitor(std::marker::PhantomData))
    }
}

/// What a JSON value holds, counted without building it: every value
/// (objects, arrays and scalars, itself included), the UTF-8 bytes of its
/// string values (keys not counted), and, for an array, its length.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JsonStats {
    pub values: u64,
    pub string_bytes: u64,
    /// `Some(length)` if the value is an array.
    pub array_len: Option<u64>,
}

impl JsonStats {
    /// Walks the JSON text `json` (nesting bounded by serde_json's
    /// recursion limit).
    pub fn of(json: &str) -> Result<Self, serde_json::Error> {
        let mut stats = JsonStats::default();
        let mut de = serde_json::Deserializer::from_str(json);
        let array_len = Counter(&mut stats).deserialize(&mut de)?;
        de.end()?;
        stats.array_len = array_len;
        Ok(stats)
    }
}

/// Counts into the stats; yields the array length if the value is one.
struct Counter<'s>(&'s mut JsonStats);

impl<'de> DeserializeSeed<'de> for Counter<'_> {
    type Value = Option<u64>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counter<'_> {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Option<u64>, E> {
        self.0.values += 1;
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<u64>, E> {
        self.0.values += 1;
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<u64>, E> {
        self.0.values += 1;
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<u64>, E> {
        self.0.values += 1;
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<u64>, E> {
        self.0.values += 1;
        Ok(None)
    }
    fn visit_str<E>(self, s: &str) -> Result<Option<u64>, E> {
        self.0.values += 1;
        self.0.string_bytes = self.0.string_bytes.saturating_add(s.len() as u64);
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<u64>, A::Error> {
        self.0.values += 1;
        let mut len = 0u64;
        while seq.next_element_seed(Counter(&mut *self.0))?.is_some() {
            len += 1;
        }
        Ok(Some(len))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
        self.0.values += 1;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Counter(&mut *self.0))?;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_bytes_and_order_and_rewrites_one_field() {
        let text = r#" {"stream":true, "model" : "gpt-4o","x":{"a":[1, 2]},"m\u00e9":"é"} "#;
        let mut obj = RawObject::parse(Bytes::from(text)).unwrap();
        assert_eq!(obj.raw("x"), Some(r#"{"a":[1, 2]}"#));
        assert_eq!(obj.get::<String>("model").unwrap().unwrap(), "gpt-4o");
        assert!(obj.get::<bool>("model").unwrap().is_err());
        assert!(obj.get::<bool>("absent").is_none());
        obj.set("model", "\"openai/gpt-4o\"".into());
        obj.set("stream_options", r#"{"include_usage":true}"#.into());
        assert_eq!(
            String::from_utf8(obj.to_bytes()).unwrap(),
            r#"{"stream":true,"model":"openai/gpt-4o","x":{"a":[1, 2]},"mé":"é","stream_options":{"include_usage":true}}"#
        );
        assert!(
            obj.to_segments().len() > 1,
            "unchanged values are shared slices"
        );
        let value = obj.to_value().unwrap();
        assert_eq!(value["x"]["a"][1], 2);
    }

    #[test]
    fn refuses_what_is_not_one_object() {
        let refuse = |text: &str| RawObject::parse(Bytes::from(text.to_owned())).unwrap_err();
        assert_eq!(refuse("[1]"), RawObjectError::NotAnObject);
        assert_eq!(refuse(""), RawObjectError::NotAnObject);
        assert_eq!(refuse("{\"a\":1"), RawObjectError::Invalid);
        assert_eq!(refuse("{\"a\":1} {}"), RawObjectError::Invalid);
        assert_eq!(
            refuse(r#"{"model":"a","model":"b"}"#),
            RawObjectError::Duplicate("model".into())
        );
    }

    #[test]
    fn counts_without_building() {
        let stats =
            JsonStats::of(r#"[{"role":"user","content":"hello"},[0,0,null],"ab"]"#).unwrap();
        assert_eq!(stats.array_len, Some(3));
        assert_eq!(stats.string_bytes, 4 + 5 + 2);
        assert_eq!(stats.values, 1 + 3 + 4 + 1);
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(JsonStats::of(&deep).is_err(), "nesting is bounded");
    }
}
