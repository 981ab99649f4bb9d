//! Parsing live input lines (JSON objects or CSV records) into steps. Each line stands alone:
//! a bad line becomes a reject naming its line number and the reason, and the stream goes on.
//! Values are prepared by the same [`Prep`] as files and training.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::columns::Columns;
use super::prep::Prep;
use crate::record::{Key, RejectReason};

/// Why a line is rejected: the reason (malformed or non-finite) and what is wrong.
pub type LineError = (RejectReason, String);

fn malformed(msg: String) -> LineError {
    (RejectReason::Malformed, msg)
}

/// Where the configured columns sit: field name -> slot (0 key, 1 time, 2.. features).
#[derive(Debug, Clone)]
pub struct FieldMap {
    slots: HashMap<String, usize>,
    width: usize,
    prep: Prep,
    features: Vec<String>,
}

impl FieldMap {
    /// The slots of `cfg`'s columns.
    pub fn new(cfg: &Columns) -> FieldMap {
        let mut slots = HashMap::new();
        slots.insert(cfg.key.clone(), 0);
        slots.insert(cfg.time.clone(), 1);
        for (i, f) in cfg.features.iter().enumerate() {
            slots.insert(f.clone(), 2 + i);
        }
        FieldMap {
            slots,
            width: cfg.features.len(),
            prep: Prep::new(cfg),
            features: cfg.features.clone(),
        }
    }

    /// Features per step.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Prepares `raw` (NaN for null) into `feats`.
    fn finish(&self, feats: &mut [f32], raw: &[f64]) -> Result<(), LineError> {
        self.prep.row(|j| raw[j], feats).map_err(|j| {
            (
                RejectReason::NonFinite,
                format!("feature `{}` is not a finite number", self.features[j]),
            )
        })
    }

    /// Parses one JSON object line into key, time and features (`feats.len() == width`).
    pub fn parse_json(&self, line: &[u8], feats: &mut [f32]) -> Result<(Key, i64), LineError> {
        let mut raw = vec![f64::NAN; self.width];
        let mut seen = vec![false; self.width + 2];
        let mut key = None;
        let mut time = None;
        let mut de = serde_json::Deserializer::from_slice(line);
        let seed = LineSeed {
            map: self,
            raw: &mut raw,
            seen: &mut seen,
            key: &mut key,
            time: &mut time,
        };
        seed.deserialize(&mut de).map_err(|e| {
            let msg = e.to_string();
            malformed(if e.is_syntax() || e.is_eof() {
                format!("not a JSON object: {msg}")
            } else {
                msg
            })
        })?;
        de.end()
            .map_err(|e| malformed(format!("trailing characters after the JSON object: {e}")))?;
        self.missing(&seen)?;
        self.finish(feats, &raw)?;
        Ok((key.expect("seen"), time.expect("seen")))
    }

    fn missing(&self, seen: &[bool]) -> Result<(), LineError> {
        if let Some(i) = seen.iter().position(|s| !s) {
            let name = self
                .slots
                .iter()
                .find(|(_, &v)| v == i)
                .map(|(k, _)| k.as_str())
                .unwrap_or("?");
            return Err(malformed(format!("missing field `{name}`")));
        }
        Ok(())
    }

    /// Parses one CSV record whose columns are named by `header`.
    pub fn parse_csv(
        &self,
        header: &[usize],
        rec: &csv::StringRecord,
        feats: &mut [f32],
    ) -> Result<(Key, i64), LineError> {
        if rec.len() != header.len() {
            return Err(malformed(format!(
                "{} fields, the header has {}",
                rec.len(),
                header.len()
            )));
        }
        let mut raw = vec![f64::NAN; self.width];
        let mut seen = vec![false; self.width + 2];
        let mut key = None;
        let mut time = None;
        for (field, &slot) in rec.iter().zip(header) {
            if slot == usize::MAX {
                continue;
            }
            seen[slot] = true;
            let f = field.trim();
            match slot {
                0 => key = Some(Key::Str(f.into())),
                1 => {
                    time = Some(
                        f.parse::<i64>()
                            .map_err(|_| malformed(format!("time `{f}` is not an integer")))?,
                    )
                }
                s => {
                    raw[s - 2] =
                        if f.is_empty() || f.eq_ignore_ascii_case("nan") || f.eq_ignore_ascii_case("null") {
                            f64::NAN
                        } else {
                            f.parse::<f64>().map_err(|_| {
                                malformed(format!(
                                    "feature `{}` = `{f}` is not a number",
                                    self.features[s - 2]
                                ))
                            })?
                        }
                }
            }
        }
        self.missing(&seen)?;
        self.finish(feats, &raw)?;
        Ok((key.expect("seen"), time.expect("seen")))
    }

    /// Slot of each header column (`usize::MAX` for columns the pipeline does not use);
    /// fails if a configured column is absent.
    pub fn csv_header(&self, names: &[String]) -> Result<Vec<usize>, String> {
        let slots: Vec<usize> = names
            .iter()
            .map(|n| self.slots.get(n.trim()).copied().unwrap_or(usize::MAX))
            .collect();
        let mut seen = vec![false; self.width + 2];
        for &s in &slots {
            if s != usize::MAX {
                seen[s] = true;
            }
        }
        self.missing(&seen)
            .map_err(|e| format!("csv header: {} (header: {})", e.1, names.join(",")))?;
        Ok(slots)
    }
}

struct LineSeed<'a> {
    map: &'a FieldMap,
    raw: &'a mut [f64],
    seen: &'a mut [bool],
    key: &'a mut Option<Key>,
    time: &'a mut Option<i64>,
}

impl<'de> DeserializeSeed<'de> for LineSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LineSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with the key, time and feature fields")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        while let Some(name) = m.next_key::<std::borrow::Cow<'de, str>>()? {
            let Some(&slot) = self.map.slots.get(name.as_ref()) else {
                m.next_value::<IgnoredAny>()?;
                continue;
            };
            self.seen[slot] = true;
            let v: serde_json::Value = m.next_value()?;
            let bad = |what: &str| de::Error::custom(format!("field `{name}` is {v}, expected {what}"));
            match slot {
                0 => {
                    *self.key = Some(match &v {
                        serde_json::Value::String(s) => Key::Str(s.as_str().into()),
                        serde_json::Value::Number(n) if n.is_i64() => Key::Int(n.as_i64().expect("i64")),
                        _ => return Err(bad("a string or integer key")),
                    })
                }
                1 => *self.time = Some(v.as_i64().ok_or_else(|| bad("an integer time"))?),
                s => {
                    self.raw[s - 2] = match &v {
                        serde_json::Value::Null => f64::NAN,
                        serde_json::Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
                        _ => return Err(bad("a number or null")),
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::KeyRef;

    fn map(nan: &str) -> FieldMap {
        let text = format!("key = \"id\"\ntime = \"ts\"\nfeatures = [\"a\", \"b\"]\nnan = \"{nan}\"\n");
        FieldMap::new(&toml::from_str::<Columns>(&text).unwrap())
    }

    #[test]
    fn json_lines() {
        let m = map("error");
        let mut f = [0.0; 2];
        let (k, t) = m
            .parse_json(
                br#"{"id": "a7", "ts": 5, "b": 2, "a": 1.5, "extra": [1, {"x": 2}]}"#,
                &mut f,
            )
            .unwrap();
        assert_eq!((k.as_ref(), t, f), (KeyRef::Str("a7"), 5, [1.5, 2.0]));
        let (k, _) = m
            .parse_json(br#"{"id": 12, "ts": 5, "a": 1, "b": 2}"#, &mut f)
            .unwrap();
        assert_eq!(k.as_ref(), KeyRef::Int(12));
        for (line, want) in [
            (&br#"{"id": "a", "ts": 5, "a": 1}"#[..], "missing field `b`"),
            (
                br#"{"id": "a", "ts": "noon", "a": 1, "b": 2}"#,
                "field `ts` is \"noon\", expected an integer time",
            ),
            (
                br#"{"id": "a", "ts": 1, "a": "x", "b": 2}"#,
                "field `a` is \"x\", expected a number or null",
            ),
            (
                br#"{"id": 1.5, "ts": 1, "a": 1, "b": 2}"#,
                "expected a string or integer key",
            ),
            (
                br#"{"id": "a", "ts": 1, "a": null, "b": 2}"#,
                "feature `a` is not a finite number",
            ),
            (b"hello", "not a JSON object"),
            (
                br#"{"id": "a", "ts": 1, "a": 1, "b": 2} x"#,
                "trailing characters",
            ),
            (br#"[1, 2]"#, "expected a JSON object"),
        ] {
            let (_, e) = m.parse_json(line, &mut f).unwrap_err();
            assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(line));
        }
        let z = map("zero");
        z.parse_json(br#"{"id": "a", "ts": 1, "a": null, "b": 2}"#, &mut f)
            .unwrap();
        assert_eq!(f, [0.0, 2.0]);
    }

    #[test]
    fn csv_records() {
        let m = map("ffill");
        let header = m
            .csv_header(&["ts".into(), "other".into(), "id".into(), "b".into(), "a".into()])
            .unwrap();
        let rec = csv::StringRecord::from(vec!["7", "zz", "dev1", "", "0.5"]);
        let mut f = [0.0; 2];
        let (k, t) = m.parse_csv(&header, &rec, &mut f).unwrap();
        // features = [a, b]: a = 0.5, b empty.
        assert_eq!((k.as_ref(), t, f[0]), (KeyRef::Str("dev1"), 7, 0.5));
        assert!(f[1].is_nan(), "ffill passes NaN on to the keyed operator");
        let e = m.csv_header(&["ts".into(), "id".into()]).unwrap_err();
        assert!(
            e.contains("missing field `a`") || e.contains("missing field `b`"),
            "{e}"
        );
        let short = csv::StringRecord::from(vec!["7", "zz"]);
        assert!(m
            .parse_csv(&header, &short, &mut f)
            .unwrap_err()
            .1
            .contains("2 fields, the header has 5"));
    }
}
