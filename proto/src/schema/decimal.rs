//! Regular expressions for "a decimal above (or at most) a bound", so a
//! JSON Schema can state a quantity's limits in every unit it may be
//! written in (`4Mi`, `4096Ki`, `0.00390625Gi` and `4194304` are one
//! size). Written by hand: no crate builds numeric-range patterns for
//! decimals with fractions.
//!
//! The numbers are the text [`crate::quantity`] parses: digits with an
//! optional fraction (`12`, `0.5`, `.5`, `007`), no sign, no exponent.

/// A non-negative decimal with a finite expansion: integer digits without
/// leading zeros (empty for 0) and fraction digits without trailing zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    int: Vec<u8>,
    frac: Vec<u8>,
}

/// Any number's fraction, or none.
const ANY_FRACTION: &str = r"(?:\.[0-9]+)?";

impl Decimal {
    /// `n / d`, exactly; `d` must be a product of powers of 2 and 5 (every
    /// unit's size is), so the expansion ends.
    pub fn ratio(n: u128, d: u128) -> Decimal {
        let (mut twos, mut fives, mut rest) = (0u32, 0u32, d);
        while rest.is_multiple_of(2) {
            rest /= 2;
            twos += 1;
        }
        while rest.is_multiple_of(5) {
            rest /= 5;
            fives += 1;
        }
        assert_eq!(rest, 1, "{d} is not a power of 2 and 5");
        // n / (2^a 5^b) = n * 2^(m-a) * 5^(m-b) / 10^m.
        let m = twos.max(fives);
        let mut digits: Vec<u8> = n.to_string().bytes().map(|b| b - b'0').collect();
        for _ in 0..m - twos {
            mul_small(&mut digits, 2);
        }
        for _ in 0..m - fives {
            mul_small(&mut digits, 5);
        }
        let point = m as usize;
        while digits.len() <= point {
            digits.insert(0, 0);
        }
        let (int, frac) = digits.split_at(digits.len() - point);
        let mut int = int.to_vec();
        while int.first() == Some(&0) {
            int.remove(0);
        }
        let mut frac = frac.to_vec();
        while frac.last() == Some(&0) {
            frac.pop();
        }
        Decimal { int, frac }
    }
}

fn mul_small(digits: &mut Vec<u8>, m: u8) {
    let mut carry = 0u8;
    for d in digits.iter_mut().rev() {
        let t = *d * m + carry;
        *d = t % 10;
        carry = t / 10;
    }
    if carry > 0 {
        digits.insert(0, carry);
    }
}

fn text(d: &[u8]) -> String {
    d.iter().map(|d| char::from(b'0' + d)).collect()
}

fn class(lo: u8, hi: u8) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("[{lo}-{hi}]")
    }
}

/// Fractions (the digits after the point) greater than `t`'s.
fn fraction_above(t: &[u8]) -> String {
    let mut alts = Vec::new();
    for (i, &d) in t.iter().enumerate() {
        if d < 9 {
            alts.push(format!("{}{}[0-9]*", text(&t[..i]), class(d + 1, 9)));
        }
    }
    alts.push(format!("{}[0-9]*[1-9][0-9]*", text(t)));
    alts.join("|")
}

/// Fractions at most `t`'s.
fn fraction_at_most(t: &[u8]) -> String {
    let mut alts = vec!["0+".to_string()];
    for (i, &d) in t.iter().enumerate() {
        if d > 0 {
            alts.push(format!("{}{}[0-9]*", text(&t[..i]), class(0, d - 1)));
        }
        alts.push(format!("{}0*", text(&t[..=i])));
    }
    alts.join("|")
}

/// Numbers whose value is greater than `t`.
pub fn above(t: &Decimal) -> String {
    let n = t.int.len();
    let mut alts = vec![format!("0*[1-9][0-9]{{{n},}}{ANY_FRACTION}")];
    for (i, &d) in t.int.iter().enumerate() {
        if d < 9 {
            alts.push(format!(
                "0*{}{}[0-9]{{{}}}{ANY_FRACTION}",
                text(&t.int[..i]),
                class(d + 1, 9),
                n - i - 1
            ));
        }
    }
    alts.push(format!(
        r"0*{}\.(?:{})",
        text(&t.int),
        fraction_above(&t.frac)
    ));
    alts.join("|")
}

/// Numbers whose value is at most `t`.
pub fn at_most(t: &Decimal) -> String {
    let n = t.int.len();
    let frac = fraction_at_most(&t.frac);
    if n == 0 {
        return format!(r"0+(?:\.(?:{frac}))?|0*\.(?:{frac})");
    }
    let mut alts = vec![format!(r"0+{ANY_FRACTION}|0*\.[0-9]+")];
    if n >= 2 {
        alts.push(format!("0*[1-9][0-9]{{0,{}}}{ANY_FRACTION}", n - 2));
    }
    for (i, &d) in t.int.iter().enumerate() {
        let lo = u8::from(i == 0);
        if d > lo {
            alts.push(format!(
                "0*{}{}[0-9]{{{}}}{ANY_FRACTION}",
                text(&t.int[..i]),
                class(lo, d - 1),
                n - i - 1
            ));
        }
    }
    alts.push(format!(r"0*{}(?:\.(?:{frac}))?", text(&t.int)));
    alts.join("|")
}

/// A whole pattern: a number in one of `units` (suffix, size of one in the
/// base unit) whose value in the base unit passes `test(bound / size)`.
pub fn in_units(units: &[(&str, u128)], bound: u128, test: fn(&Decimal) -> String) -> String {
    let alts: Vec<String> = units
        .iter()
        .map(|(suffix, size)| format!("(?:{}){suffix}", test(&Decimal::ratio(bound, *size))))
        .collect();
    format!("^(?:{})$", alts.join("|"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The value of number text, as (integer, fraction) digits without
    /// padding, for exact comparison.
    fn value(s: &str) -> Option<Decimal> {
        let (i, f) = s.split_once('.').unwrap_or((s, ""));
        if (i.is_empty() && f.is_empty()) || (s.contains('.') && f.is_empty()) {
            return None;
        }
        let digits = |t: &str| t.bytes().map(|b| b - b'0').collect::<Vec<u8>>();
        let mut int = digits(i);
        while int.first() == Some(&0) {
            int.remove(0);
        }
        let mut frac = digits(f);
        while frac.last() == Some(&0) {
            frac.pop();
        }
        Some(Decimal { int, frac })
    }

    fn cmp(a: &Decimal, b: &Decimal) -> std::cmp::Ordering {
        a.int
            .len()
            .cmp(&b.int.len())
            .then_with(|| a.int.cmp(&b.int))
            .then_with(|| a.frac.cmp(&b.frac))
    }

    fn matches(pattern: &str, s: &str) -> bool {
        let schema = serde_json::json!({ "type": "string", "pattern": format!("^(?:{pattern})$") });
        jsonschema::is_valid(&schema, &serde_json::json!(s))
    }

    #[test]
    fn ratios_are_exact() {
        let d = Decimal::ratio(4 << 20, 1 << 30);
        assert_eq!(
            (text(&d.int), text(&d.frac)),
            ("".into(), "00390625".into())
        );
        let d = Decimal::ratio((4 << 20) - 1, 1000);
        assert_eq!((text(&d.int), text(&d.frac)), ("4194".into(), "303".into()));
        let d = Decimal::ratio(10_000_000, 1);
        assert_eq!(
            (text(&d.int), text(&d.frac)),
            ("10000000".into(), "".into())
        );
    }

    proptest! {
        // Every short number text against every bound in a small set:
        // the pattern matches exactly when the value compares so.
        #[test]
        fn patterns_compare_like_values(
            s in "[0-9]{0,5}(\\.[0-9]{0,4})?",
            n in 0u128..100_000,
            d in prop::sample::select(vec![1u128, 2, 8, 10, 1000, 1024, 5]),
        ) {
            let t = Decimal::ratio(n, d);
            let Some(v) = value(&s) else {
                prop_assert!(!matches(&above(&t), &s) && !matches(&at_most(&t), &s), "{s:?}");
                return Ok(());
            };
            let o = cmp(&v, &t);
            prop_assert_eq!(matches(&above(&t), &s), o.is_gt(), "{} > {}.{}", s, text(&t.int), text(&t.frac));
            prop_assert_eq!(matches(&at_most(&t), &s), o.is_le(), "{} <= {}.{}", s, text(&t.int), text(&t.frac));
        }
    }
}
