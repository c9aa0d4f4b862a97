//! `skiff-gateway state export` / `state import`: the fleet's records as
//! NDJSON, to move between stores (redb ↔ etcd) and for backups.
//!
//! The first line says what the file is and at which store revision it
//! was taken; each next line is one record:
//!
//! ```text
//! {"skiff_state":1,"revision":42,"exported_ms":1767225600000}
//! {"kind":"workloads","key":"web","value":{…}}
//! ```
//!
//! An import goes into an empty store only, checks every record before
//! it writes any, and commits in batches.

use serde::{Deserialize, Serialize};

use crate::control::State;
use crate::store::{Batch, Kind, Loaded, Revision, Snapshot, StoreError};

/// The format's version.
pub const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    skiff_state: u32,
    revision: Revision,
    exported_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    kind: String,
    key: String,
    value: serde_json::Value,
}

/// A file that is not an export, or a record in it that is not valid.
#[derive(Debug, thiserror::Error)]
pub enum StateIoError {
    #[error("line {line}: {why}")]
    Bad { line: usize, why: String },
    #[error("line {line}: {source}")]
    Record { line: usize, source: StoreError },
    #[error("the file holds no header line: it is not a state export")]
    Empty,
}

/// The snapshot as NDJSON.
pub fn export(loaded: &Loaded, now_ms: i64) -> String {
    let mut out = serde_json::to_string(&Header {
        skiff_state: FORMAT,
        revision: loaded.revision,
        exported_ms: now_ms,
    })
    .expect("serializes");
    out.push('\n');
    for (kind, rows) in loaded.records.iter().filter(|(k, _)| **k != Kind::Meta) {
        for (key, value) in rows {
            let value = serde_json::from_slice(value).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(value).into())
            });
            let line = Line {
                kind: kind.name().to_string(),
                key: key.clone(),
                value,
            };
            out.push_str(&serde_json::to_string(&line).expect("serializes"));
            out.push('\n');
        }
    }
    out
}

/// Reads an export back: its records, each checked by decoding it as the
/// gateway does when it loads.
pub fn parse(text: &str) -> Result<Snapshot, StateIoError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, first) = lines.next().ok_or(StateIoError::Empty)?;
    let header: Header = serde_json::from_str(first).map_err(|e| StateIoError::Bad {
        line: 1,
        why: format!("not a state export header: {e}"),
    })?;
    if header.skiff_state != FORMAT {
        return Err(StateIoError::Bad {
            line: 1,
            why: format!(
                "format {} (this gateway reads format {FORMAT})",
                header.skiff_state
            ),
        });
    }
    let mut out = Snapshot::new();
    let mut check = State::default();
    for (i, l) in lines {
        let line = i + 1;
        let r: Line = serde_json::from_str(l).map_err(|e| StateIoError::Bad {
            line,
            why: e.to_string(),
        })?;
        let kind = Kind::from_name(&r.kind).ok_or_else(|| StateIoError::Bad {
            line,
            why: format!("unknown kind {:?}", r.kind),
        })?;
        if r.key.is_empty() {
            return Err(StateIoError::Bad {
                line,
                why: "empty key".into(),
            });
        }
        let bytes = serde_json::to_vec(&r.value).expect("serializes");
        check
            .apply(kind, &r.key, Some(&bytes))
            .map_err(|source| StateIoError::Record { line, source })?;
        if out
            .entry(kind)
            .or_default()
            .insert(r.key.clone(), bytes)
            .is_some()
        {
            return Err(StateIoError::Bad {
                line,
                why: format!("{} {} appears twice", r.kind, r.key),
            });
        }
    }
    Ok(out)
}

/// The records as batches of at most `size` operations.
pub fn batches(records: &Snapshot, size: usize) -> Vec<Batch> {
    let mut out = vec![Batch::default()];
    for (kind, rows) in records {
        for (key, value) in rows {
            if out.last().is_some_and(|b| b.len() >= size) {
                out.push(Batch::default());
            }
            let b = out.last_mut().expect("one");
            b.puts.push((*kind, key.clone(), value.clone()));
        }
    }
    out.retain(|b| !b.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemStore, Store};

    #[test]
    fn an_export_reads_back_to_the_same_records() {
        let s = MemStore::default();
        let mut b = Batch::default();
        b.put(
            Kind::JoinToken,
            "sha256:ab",
            &serde_json::json!({"site": "default", "expires_ms": 5, "used": false, "created_ms": 1}),
        );
        b.put(
            Kind::ApiToken,
            "sha256:cd",
            &serde_json::json!({"name": "ci", "role": "operator", "created_ms": 1}),
        );
        s.commit(&b).unwrap();
        let loaded = s.load().unwrap();
        let text = export(&loaded, 7);
        assert!(
            text.starts_with("{\"skiff_state\":1,\"revision\":1,"),
            "{text}"
        );
        let back = parse(&text).unwrap();
        assert_eq!(back, loaded.records);
        // Into another store, in batches of one.
        let t = MemStore::default();
        for b in batches(&back, 1) {
            t.commit(&b).unwrap();
        }
        assert_eq!(t.load().unwrap().records, loaded.records);
    }

    #[test]
    fn a_bad_file_is_refused_naming_the_line() {
        let header = "{\"skiff_state\":1,\"revision\":1,\"exported_ms\":0}\n";
        for (text, want) in [
            ("", "no header line"),
            (
                "{\"skiff_state\":9,\"revision\":1,\"exported_ms\":0}\n",
                "line 1: format 9",
            ),
            ("not json\n", "line 1: not a state export header"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        for (line, want) in [
            (
                "{\"kind\":\"ships\",\"key\":\"a\",\"value\":{}}",
                "line 2: unknown kind \"ships\"",
            ),
            (
                "{\"kind\":\"api_tokens\",\"key\":\"a\",\"value\":{\"name\":1}}",
                "line 2: state store record ApiToken a",
            ),
            (
                "{\"kind\":\"api_tokens\",\"key\":\"\",\"value\":{}}",
                "line 2: empty key",
            ),
        ] {
            let e = parse(&format!("{header}{line}\n")).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
    }
}
