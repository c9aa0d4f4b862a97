//! Placement constraints on node attributes:
//!
//! ```text
//! node.labels.disk == ssd
//! node.labels.disk != hdd
//! node.labels.zone in (a, b)
//! node.labels.zone not in (c)
//! node.labels.gpu exists
//! node.labels.gpu not exists
//! node.site == onprem-dc1        (also node.name, node.arch, node.os)
//! ```

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attribute {
    Label(String),
    Name,
    Site,
    Arch,
    Os,
}

/// How it compares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConstraintOp {
    Eq(String),
    Ne(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

/// One constraint: `node.labels.disk == ssd`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Constraint {
    pub attribute: Attribute,
    pub op: ConstraintOp,
}

/// Why a constraint did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a constraint: {reason}")]
pub struct ConstraintError {
    input: String,
    reason: &'static str,
}

/// The blanks a constraint may have around its parts: space and tab.
const BLANK: [char; 2] = [' ', '\t'];

fn is_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn valid_value(v: &str) -> bool {
    !v.is_empty() && v.len() <= 253 && v.chars().all(is_value_char)
}

impl Constraint {
    /// Whether a node with these attributes satisfies the constraint;
    /// `lookup` returns the node's value for an attribute, if it has one.
    pub fn matches<'a>(&self, lookup: impl Fn(&Attribute) -> Option<&'a str>) -> bool {
        let value = lookup(&self.attribute);
        match (&self.op, value) {
            (ConstraintOp::Exists, v) => v.is_some(),
            (ConstraintOp::NotExists, v) => v.is_none(),
            (ConstraintOp::Eq(want), Some(v)) => v == want,
            (ConstraintOp::Eq(_), None) => false,
            (ConstraintOp::Ne(want), v) => v != Some(want.as_str()),
            (ConstraintOp::In(set), Some(v)) => set.iter().any(|s| s == v),
            (ConstraintOp::In(_), None) => false,
            (ConstraintOp::NotIn(set), v) => v.is_none_or(|v| !set.iter().any(|s| s == v)),
        }
    }
}

impl FromStr for Constraint {
    type Err = ConstraintError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ConstraintError {
            input: s.to_string(),
            reason,
        };
        let s_trim = s.trim_matches(BLANK);
        let key_end = s_trim
            .find(|c: char| BLANK.contains(&c) || c == '=' || c == '!')
            .unwrap_or(s_trim.len());
        let (key, rest) = s_trim.split_at(key_end);
        let attribute = match key {
            "node.name" => Attribute::Name,
            "node.site" => Attribute::Site,
            "node.arch" => Attribute::Arch,
            "node.os" => Attribute::Os,
            k => match k.strip_prefix("node.labels.") {
                Some(label) if valid_value(label) => Attribute::Label(label.to_string()),
                Some(_) => return Err(err("bad label name")),
                None => {
                    return Err(err(
                        "expected node.labels.KEY, node.name, node.site, node.arch or node.os",
                    ));
                }
            },
        };
        let rest = rest.trim_matches(BLANK);
        let single = |v: &str| -> Result<String, ConstraintError> {
            let v = v.trim_matches(BLANK);
            if valid_value(v) {
                Ok(v.to_string())
            } else {
                Err(err("bad value (letters, digits, '-', '_', '.', '/')"))
            }
        };
        let set = |v: &str| -> Result<Vec<String>, ConstraintError> {
            let inner = v
                .trim_matches(BLANK)
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or(err("a set is written (a, b)"))?;
            let values = inner
                .split(',')
                .map(single)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(values)
        };
        let op = if let Some(v) = rest.strip_prefix("==") {
            ConstraintOp::Eq(single(v)?)
        } else if let Some(v) = rest.strip_prefix("!=") {
            ConstraintOp::Ne(single(v)?)
        } else if let Some(v) = rest.strip_prefix("not in") {
            ConstraintOp::NotIn(set(v)?)
        } else if let Some(v) = rest.strip_prefix("in") {
            ConstraintOp::In(set(v)?)
        } else if rest == "exists" {
            ConstraintOp::Exists
        } else if rest == "not exists" {
            ConstraintOp::NotExists
        } else {
            return Err(err(
                "expected ==, !=, in (..), not in (..), exists or not exists",
            ));
        };
        Ok(Self { attribute, op })
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attribute::Label(k) => write!(f, "node.labels.{k}"),
            Attribute::Name => f.write_str("node.name"),
            Attribute::Site => f.write_str("node.site"),
            Attribute::Arch => f.write_str("node.arch"),
            Attribute::Os => f.write_str("node.os"),
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.attribute;
        match &self.op {
            ConstraintOp::Eq(v) => write!(f, "{a} == {v}"),
            ConstraintOp::Ne(v) => write!(f, "{a} != {v}"),
            ConstraintOp::In(s) => write!(f, "{a} in ({})", s.join(", ")),
            ConstraintOp::NotIn(s) => write!(f, "{a} not in ({})", s.join(", ")),
            ConstraintOp::Exists => write!(f, "{a} exists"),
            ConstraintOp::NotExists => write!(f, "{a} not exists"),
        }
    }
}

impl Serialize for Constraint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Constraint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a constraint such as \"node.labels.disk == ssd\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Constraint, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// The constraint grammar as a regular expression, exactly what
/// `from_str` accepts.
pub(crate) const PATTERN: &str = concat!(
    r"^[ \t]*node\.(?:labels\.[A-Za-z0-9._/-]{1,253}|name|site|arch|os)",
    r"(?:[ \t]*(?:==|!=)[ \t]*[A-Za-z0-9._/-]{1,253}",
    r"|[ \t]+(?:not in|in)[ \t]*\([ \t]*[A-Za-z0-9._/-]{1,253}[ \t]*(?:,[ \t]*[A-Za-z0-9._/-]{1,253}[ \t]*)*\)",
    r"|[ \t]+(?:exists|not exists))[ \t]*$",
);

impl JsonSchema for Constraint {
    fn schema_name() -> Cow<'static, str> {
        "Constraint".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "ATTRIBUTE OP [VALUE]: node.labels.KEY|node.name|node.site|node.arch|node.os with ==, !=, in (a, b), not in (a, b), exists, not exists",
            "type": "string",
            "pattern": PATTERN
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node<'a>(labels: &'a [(&'a str, &'a str)]) -> impl Fn(&Attribute) -> Option<&'a str> {
        move |a| match a {
            Attribute::Label(k) => labels.iter().find(|(lk, _)| lk == k).map(|(_, v)| *v),
            Attribute::Site => Some("onprem-dc1"),
            _ => None,
        }
    }

    #[test]
    fn matching_table() {
        let labels = [("disk", "ssd"), ("zone", "a")];
        let cases = [
            ("node.labels.disk == ssd", true),
            ("node.labels.disk==ssd", true),
            ("node.labels.disk == hdd", false),
            ("node.labels.disk != hdd", true),
            ("node.labels.missing != x", true),
            ("node.labels.zone in (a, b)", true),
            ("node.labels.zone in (b)", false),
            ("node.labels.zone not in (b, c)", true),
            ("node.labels.zone not in (a)", false),
            ("node.labels.missing not in (a)", true),
            ("node.labels.missing in (a)", false),
            ("node.labels.disk exists", true),
            ("node.labels.gpu exists", false),
            ("node.labels.gpu not exists", true),
            ("node.site == onprem-dc1", true),
        ];
        for (text, want) in cases {
            let c: Constraint = text.parse().unwrap();
            assert_eq!(c.matches(node(&labels)), want, "{text}");
        }
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "disk == ssd",
            "node.labels.disk",
            "node.labels.disk = ssd",
            "node.labels.disk == ",
            "node.labels.zone in a, b",
            "node.labels. == x",
            "node.labels.disk == s s",
        ] {
            assert!(bad.parse::<Constraint>().is_err(), "{bad:?} parsed");
        }
    }

    fn value() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9._/-]{0,10}"
    }

    proptest! {
        #[test]
        fn round_trips(
            key in value(),
            op in 0usize..6,
            values in proptest::collection::vec(value(), 1..4),
        ) {
            let op = match op {
                0 => ConstraintOp::Eq(values[0].clone()),
                1 => ConstraintOp::Ne(values[0].clone()),
                2 => ConstraintOp::In(values.clone()),
                3 => ConstraintOp::NotIn(values.clone()),
                4 => ConstraintOp::Exists,
                _ => ConstraintOp::NotExists,
            };
            let c = Constraint { attribute: Attribute::Label(key), op };
            prop_assert_eq!(c.to_string().parse::<Constraint>().unwrap(), c);
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<Constraint>();
        }
    }
}
