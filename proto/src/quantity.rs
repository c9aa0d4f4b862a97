//! Exact resource quantities: CPU in millicores and sizes in bytes.
//!
//! Both parse decimal text without floating point, so `1.5Gi` is exactly
//! 1,610,612,736 bytes and `0.1` CPU is exactly 100 millicores. A value
//! finer than the unit (`0.0001` CPU, `1.1` bytes, `0.3Ki`) is rounded up
//! to the next millicore or byte, as Kubernetes' quantities are. (Refusing
//! it instead would make the rule one no JSON Schema can state: which
//! fractions of a `Ki` are whole bytes is not a regular language.) Display
//! gives the canonical form, and parsing it gives the same value back.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Why a quantity did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not {what}{hint}")]
pub struct QuantityError {
    input: String,
    what: &'static str,
    hint: &'static str,
}

/// CPU in millicores: `500m`, `0.5`, `2`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu(u64);

/// A size in bytes: `256Mi`, `2Gi`, `1.5G`, `1048576`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

impl Cpu {
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }
    pub const fn from_cores(cores: u64) -> Self {
        Self(cores * 1000)
    }
    pub const fn millis(self) -> u64 {
        self.0
    }
}

impl ByteSize {
    pub const fn from_bytes(bytes: u64) -> Self {
        Self(bytes)
    }
    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }
    pub const fn gib(n: u64) -> Self {
        Self(n << 30)
    }
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Splits `12.5Gi` into ("12", "5", "Gi"); digits only, no sign, no exponent.
fn split_decimal(s: &str) -> Option<(&str, &str, &str)> {
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    if num.ends_with('.') && frac.is_empty() {
        return None;
    }
    Some((int, frac, suffix))
}

/// `int.frac * scale` rounded up to a whole number, or None when it does
/// not fit in a u64. Exact for any length of fraction: the fraction is
/// multiplied digit by digit from the right, keeping only the carry.
fn scale_up(int: &str, frac: &str, scale: u128) -> Option<u64> {
    let int = int.trim_start_matches('0');
    if int.len() > 20 {
        return None;
    }
    let int_v: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let (mut carry, mut exact) = (0u128, true);
    for d in frac.bytes().rev() {
        let t = u128::from(d - b'0') * scale + carry;
        exact &= t.is_multiple_of(10);
        carry = t / 10;
    }
    let total = int_v
        .checked_mul(scale)?
        .checked_add(carry)?
        .checked_add(u128::from(!exact))?;
    u64::try_from(total).ok()
}

impl FromStr for Cpu {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |hint| QuantityError {
            input: s.to_string(),
            what: "a CPU quantity",
            hint,
        };
        let (int, frac, suffix) = split_decimal(s).ok_or(err(" (e.g. 500m, 0.5, 2)"))?;
        let scale = match suffix {
            "" => 1000,
            "m" => 1,
            _ => return Err(err(" (e.g. 500m, 0.5, 2)")),
        };
        scale_up(int, frac, scale)
            .map(Cpu)
            .ok_or(err(" (too large)"))
    }
}

const BINARY: [(&str, u32); 6] = [
    ("Ei", 60),
    ("Pi", 50),
    ("Ti", 40),
    ("Gi", 30),
    ("Mi", 20),
    ("Ki", 10),
];
const DECIMAL: [(&str, u32); 6] = [
    ("E", 18),
    ("P", 15),
    ("T", 12),
    ("G", 9),
    ("M", 6),
    ("k", 3),
];

/// The units a CPU quantity is written in, with their size in millicores.
pub(crate) const CPU_UNITS: [(&str, u128); 2] = [("", 1000), ("m", 1)];

/// The units a size is written in, with their size in bytes.
pub(crate) fn byte_units() -> Vec<(&'static str, u128)> {
    let mut units = vec![("", 1)];
    units.extend(BINARY.iter().map(|(n, shift)| (*n, 1u128 << shift)));
    units.extend(DECIMAL.iter().map(|(n, exp)| (*n, 10u128.pow(*exp))));
    units
}

impl FromStr for ByteSize {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |hint| QuantityError {
            input: s.to_string(),
            what: "a size in bytes",
            hint,
        };
        let (int, frac, suffix) = split_decimal(s).ok_or(err(" (e.g. 256Mi, 2Gi, 1G, 1048576)"))?;
        let scale: u128 = if suffix.is_empty() {
            1
        } else if let Some((_, shift)) = BINARY.iter().find(|(n, _)| *n == suffix) {
            1u128 << shift
        } else if let Some((_, exp)) = DECIMAL.iter().find(|(n, _)| *n == suffix) {
            10u128.pow(*exp)
        } else if matches!(suffix, "m" | "g" | "b" | "mb" | "gb" | "MB" | "GB") {
            return Err(err(" (write binary sizes as Ki, Mi, Gi, e.g. 256Mi)"));
        } else {
            return Err(err(" (e.g. 256Mi, 2Gi, 1G, 1048576)"));
        };
        scale_up(int, frac, scale)
            .map(ByteSize)
            .ok_or(err(" (too large)"))
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v != 0 {
            for (name, shift) in BINARY {
                if v.trailing_zeros() >= shift {
                    return write!(f, "{}{name}", v >> shift);
                }
            }
            for (name, exp) in DECIMAL {
                let scale = 10u64.pow(exp);
                if v.is_multiple_of(scale) {
                    return write!(f, "{}{name}", v / scale);
                }
            }
        }
        write!(f, "{v}")
    }
}

/// Accepts a string, an integer or a float (YAML `cpu: 1.5`); floats go
/// through their shortest decimal text, so `1.5` parses as exactly 1.5.
macro_rules! quantity_serde {
    ($ty:ident, $expecting:literal, $int_scale:expr, $pattern:literal, $desc:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        v.checked_mul($int_scale)
                            .map($ty)
                            .ok_or_else(|| E::custom(format!("{v} is too large")))
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        u64::try_from(v)
                            .map_err(|_| E::custom(format!("{v} is negative")))
                            .and_then(|v| self.visit_u64(v))
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$ty, E> {
                        if !v.is_finite() || v < 0.0 {
                            return Err(E::custom(format!("{v} is not {}", $expecting)));
                        }
                        self.visit_str(&format!("{v}"))
                    }
                }
                d.deserialize_any(V)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "description": $desc,
                    "oneOf": [
                        { "type": "string", "pattern": $pattern },
                        { "type": "number", "minimum": 0 }
                    ]
                })
            }
        }
    };
}

quantity_serde!(
    Cpu,
    "a CPU quantity",
    1000,
    r"^[0-9]*\.?[0-9]+m?$",
    "CPU: cores (`2`, `0.5`) or millicores (`500m`)"
);
quantity_serde!(
    ByteSize,
    "a size in bytes",
    1,
    r"^[0-9]*\.?[0-9]+([kMGTPE]|[KMGTPE]i)?$",
    "Bytes, with an optional suffix: Ki Mi Gi Ti Pi Ei (powers of 1024) or k M G T P E (powers of 1000)"
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cpu_table() {
        for (input, millis) in [
            ("500m", 500),
            ("1.5", 1500),
            ("2", 2000),
            ("0.25", 250),
            (".5", 500),
            ("0.001", 1),
            ("1.000", 1000),
            ("0m", 0),
            // Finer than a millicore: rounded up, as Kubernetes does.
            ("0.0001", 1),
            ("1.5m", 2),
            ("0.0010000000000000000000000000000000000001", 2),
            ("000000000000000000000000000000000002", 2000),
        ] {
            assert_eq!(input.parse::<Cpu>().unwrap().millis(), millis, "{input}");
        }
        for bad in [
            "",
            "m",
            "1.",
            "-1",
            "1e3",
            "2cores",
            "1..2",
            " ",
            " 1",
            "1 ",
            ".",
            "18446744073709552",
        ] {
            assert!(bad.parse::<Cpu>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn bytes_table() {
        for (input, bytes) in [
            ("256Mi", 256u64 << 20),
            ("2Gi", 2 << 30),
            ("1.5Gi", 1_610_612_736),
            ("1G", 1_000_000_000),
            ("1k", 1000),
            ("1048576", 1_048_576),
            ("0.5Ki", 512),
            ("15Ei", 15 << 60),
            // Not a whole number of bytes: rounded up.
            ("1.1", 2),
            ("0.3Ki", 308),
            ("0.0000001Ki", 1),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(input.parse::<ByteSize>().unwrap().bytes(), bytes, "{input}");
        }
        for bad in [
            "",
            "12Zb",
            "256m",
            "16Ei",
            "-5",
            "1e9",
            "Gi",
            "18446744073709551616",
            "18446744073709551615.5",
            " 1",
        ] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn error_message_names_input() {
        let e = "12Zb".parse::<ByteSize>().unwrap_err().to_string();
        assert!(e.starts_with("\"12Zb\" is not a size in bytes"), "{e}");
        let e = "256m".parse::<ByteSize>().unwrap_err().to_string();
        assert!(e.contains("256Mi"), "{e}");
    }

    #[test]
    fn display_is_canonical() {
        assert_eq!(ByteSize::from_bytes(256 << 20).to_string(), "256Mi");
        assert_eq!(ByteSize::from_bytes(1_000_000_000).to_string(), "1G");
        assert_eq!(ByteSize::from_bytes(1234).to_string(), "1234");
        assert_eq!(ByteSize::from_bytes(0).to_string(), "0");
        assert_eq!(Cpu::from_millis(1500).to_string(), "1500m");
        assert_eq!(Cpu::from_millis(2000).to_string(), "2");
    }

    #[test]
    fn yaml_numbers_are_exact() {
        let c: Cpu = serde_yaml_ng::from_str("1.5").unwrap();
        assert_eq!(c.millis(), 1500);
        let c: Cpu = serde_yaml_ng::from_str("0.1").unwrap();
        assert_eq!(c.millis(), 100);
        let c: Cpu = serde_yaml_ng::from_str("2").unwrap();
        assert_eq!(c.millis(), 2000);
        let b: ByteSize = serde_yaml_ng::from_str("1024").unwrap();
        assert_eq!(b.bytes(), 1024);
        assert!(serde_yaml_ng::from_str::<ByteSize>("-1").is_err());
    }

    proptest! {
        #[test]
        fn cpu_round_trips(m in any::<u64>()) {
            let c = Cpu::from_millis(m);
            prop_assert_eq!(c.to_string().parse::<Cpu>().unwrap(), c);
        }

        #[test]
        fn bytes_round_trip(b in any::<u64>()) {
            let v = ByteSize::from_bytes(b);
            prop_assert_eq!(v.to_string().parse::<ByteSize>().unwrap(), v);
        }

        #[test]
        fn bytes_with_suffix_are_exact(n in 0u64..1 << 20, suffix in 0usize..4) {
            let (name, shift) = BINARY[2 + suffix];
            let parsed: ByteSize = format!("{n}{name}").parse().unwrap();
            prop_assert_eq!(parsed.bytes(), n << shift);
        }

        #[test]
        fn fractions_round_up(n in 0u64..1 << 40, frac in 1u64..1000) {
            // n + frac/1000 bytes is exact to the next byte, never below.
            let parsed: ByteSize = format!("{n}.{frac:03}").parse().unwrap();
            prop_assert_eq!(parsed.bytes(), n + 1);
            let parsed: Cpu = format!("{n}.{frac:03}1").parse().unwrap();
            prop_assert_eq!(parsed.millis(), n * 1000 + frac + 1);
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,24}") {
            let _ = s.parse::<Cpu>();
            let _ = s.parse::<ByteSize>();
        }

        #[test]
        fn decimal_like_input_never_panics(s in "[0-9.]{0,40}(m|Ki|Mi|Gi|Ei|E|k)?") {
            let _ = s.parse::<Cpu>();
            let _ = s.parse::<ByteSize>();
        }
    }
}
