//! Civil (proleptic Gregorian) dates from days since 1970-01-01, after
//! Howard Hinnant's `civil_from_days`. Shared, as source, by the agent
//! (`runtime::logfile`) and the `no_std` supervisor, so log timestamps are
//! written and read by the same arithmetic.

/// `(year, month 1-12, day 1-31)` of a day counted from 1970-01-01.
pub const fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}
