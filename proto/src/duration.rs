//! Durations written the way Docker, Nomad and Go write them: `5s`, `500ms`,
//! `1m30s`, `2h`. Parsed by hand because the common crates accept units a
//! spec must not (months, years, bare numbers) and print a different form.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A non-negative duration with millisecond precision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

const UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)];

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
    pub const fn std(self) -> std::time::Duration {
        self.0
    }
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a duration (e.g. 500ms, 5s, 1m30s, 2h: units h, m, s, ms, largest first, at most 12 digits each)"
)]
pub struct DurationError(String);

/// Most digits one component may have: `999999999999h` and the smaller
/// units after it still fit in a u64 of milliseconds.
const MAX_DIGITS: usize = 12;

impl FromStr for Duration {
    type Err = DurationError;
    /// Each unit at most once, largest first (`1h30m`, not `30m1h`), as
    /// Duration's Display writes them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationError(s.to_string());
        if s.is_empty() {
            return Err(err());
        }
        if s == "0" {
            return Ok(Self::default());
        }
        let mut rest = s;
        let mut total: u64 = 0;
        let mut next_unit = 0;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
            if digits == 0 || digits > MAX_DIGITS {
                return Err(err());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            let i = UNITS[next_unit..]
                .iter()
                .position(|(u, _)| *u == unit)
                .ok_or_else(err)?
                + next_unit;
            next_unit = i + 1;
            total = n
                .checked_mul(UNITS[i].1)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(err)?;
            rest = &rest[unit_len..];
        }
        Ok(Self::from_millis(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in UNITS {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 5s or 1m30s")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// The grammar `from_str` accepts, as a regular expression.
pub(crate) const PATTERN: &str = concat!(
    "^(?:0",
    "|[0-9]{1,12}h(?:[0-9]{1,12}m)?(?:[0-9]{1,12}s)?(?:[0-9]{1,12}ms)?",
    "|[0-9]{1,12}m(?:[0-9]{1,12}s)?(?:[0-9]{1,12}ms)?",
    "|[0-9]{1,12}s(?:[0-9]{1,12}ms)?",
    "|[0-9]{1,12}ms)$"
);

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: digits followed by a unit (h, m, s, ms), each unit once and largest first, at most 12 digits each, e.g. 500ms, 5s, 1m30s",
            "type": "string",
            "pattern": PATTERN
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        for (s, ms) in [
            ("5s", 5000),
            ("500ms", 500),
            ("1m30s", 90_000),
            ("2h", 7_200_000),
            ("0", 0),
            ("0s", 0),
            ("1h1ms", 3_600_001),
            (
                "999999999999h999999999999m999999999999s999999999999ms",
                3_661_000_999_996_338_999,
            ),
        ] {
            assert_eq!(s.parse::<Duration>().unwrap().as_millis(), ms, "{s}");
        }
        for bad in [
            "",
            "5",
            "s",
            "5 s",
            "-5s",
            "1.5s",
            "5d",
            "5sec",
            "1m30",
            "30s1m",
            "1s1s",
            "1ms1s",
            "1234567890123s",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} parsed");
        }
    }

    proptest! {
        #[test]
        fn round_trips(ms in 0u64..(1 << 50)) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }

        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            let _ = s.parse::<Duration>();
        }
    }
}
