//! `CacheConfig.ExpireAfter` durations (SPEC 4). SageMaker parses these
//! leniently, and definitions written for it must keep working here: the
//! leading `P` is optional, units are case-insensitive, and `M` means months
//! before the `T` and minutes after it (`P30M` is 30 months, `PT30M` 30 minutes).

use chrono::{DateTime, Months, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// A parsed duration. Months are kept apart from days because their length
/// depends on the calendar; they are subtracted with calendar arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpireAfter {
    pub months: u32,
    pub days: u32,
    pub seconds: u64,
}

impl ExpireAfter {
    /// The oldest end time a cache entry may have to still be valid at `now`.
    /// Saturates at the earliest representable time instead of failing, since
    /// "expire after a million years" simply means "never expire".
    pub fn earliest_valid(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let earliest = now
            .checked_sub_months(Months::new(self.months))
            .and_then(|t| t.checked_sub_signed(TimeDelta::try_days(i64::from(self.days))?))
            .and_then(|t| {
                let secs = i64::try_from(self.seconds).ok()?;
                t.checked_sub_signed(TimeDelta::try_seconds(secs)?)
            });
        earliest.unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// The oldest end a cache entry may have to be served at `now`: its step's
/// `ExpireAfter` capped by the server-wide `cache.max_expire_after` (a step
/// without `ExpireAfter` gets the cap). The one rule the run-time lookup and
/// the plan share; retention keeps every entry younger than the cap.
pub fn cache_valid_since(expire_after: Option<ExpireAfter>, cap: ExpireAfter, now: DateTime<Utc>) -> DateTime<Utc> {
    let capped = cap.earliest_valid(now);
    expire_after.map_or(capped, |e| e.earliest_valid(now).max(capped))
}

/// Parses an ISO-8601-like duration the way SageMaker accepts it:
/// `P30D`, `30d`, `PT1H`, `T12H`, `P4DT12H`, `P1Y`, `P2W`, `PT30M`, `P30M`.
pub fn parse_expire_after(s: &str) -> Result<ExpireAfter, String> {
    let bad = |why: &str| format!("invalid duration {s:?}: {why}");
    let text = s.trim().to_ascii_uppercase();
    let mut rest = text.strip_prefix('P').unwrap_or(&text).chars().peekable();
    if rest.peek().is_none() {
        return Err(bad("it is empty"));
    }
    let (mut months, mut days, mut seconds) = (0u64, 0u64, 0u64);
    let mut in_time = false;
    while let Some(&c) = rest.peek() {
        if c == 'T' {
            if in_time {
                return Err(bad("'T' appears twice"));
            }
            in_time = true;
            rest.next();
            continue;
        }
        let mut number: Option<u64> = None;
        while let Some(d) = rest.peek().and_then(|c| c.to_digit(10)) {
            let n = number.unwrap_or(0);
            number = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d)))
                    .ok_or_else(|| bad("number too large"))?,
            );
            rest.next();
        }
        let Some(n) = number else {
            return Err(bad(&format!("expected a number, found {c:?}")));
        };
        let Some(unit) = rest.next() else {
            return Err(bad(&format!("number {n} has no unit (Y, M, W, D, H or S)")));
        };
        let too_large = || bad("value too large");
        let add = |acc: u64, k: u64| n.checked_mul(k).and_then(|v| v.checked_add(acc));
        match (unit, in_time) {
            ('Y', false) => months = add(months, 12).ok_or_else(too_large)?,
            ('M', false) => months = add(months, 1).ok_or_else(too_large)?,
            ('W', false) => days = add(days, 7).ok_or_else(too_large)?,
            ('D', false) => days = add(days, 1).ok_or_else(too_large)?,
            // Hours and seconds are unambiguous, so accept them without `T`.
            ('H', _) => seconds = add(seconds, 3600).ok_or_else(too_large)?,
            ('M', true) => seconds = add(seconds, 60).ok_or_else(too_large)?,
            ('S', _) => seconds = add(seconds, 1).ok_or_else(too_large)?,
            ('Y' | 'W' | 'D', true) => return Err(bad(&format!("unit {unit} cannot appear after 'T'"))),
            (u, _) => return Err(bad(&format!("unknown unit {u:?}"))),
        }
    }
    if months == 0 && days == 0 && seconds == 0 {
        return Err(bad("the duration is zero"));
    }
    Ok(ExpireAfter {
        months: u32::try_from(months).map_err(|_| bad("too many months"))?,
        days: u32::try_from(days).map_err(|_| bad("too many days"))?,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ea(months: u32, days: u32, seconds: u64) -> ExpireAfter {
        ExpireAfter { months, days, seconds }
    }

    #[test]
    fn accepted_forms() {
        let cases = [
            ("P30D", ea(0, 30, 0)),
            ("30d", ea(0, 30, 0)),
            ("PT1H", ea(0, 0, 3600)),
            ("T12H", ea(0, 0, 12 * 3600)),
            ("P4DT12H", ea(0, 4, 12 * 3600)),
            ("P1Y", ea(12, 0, 0)),
            ("P2W", ea(0, 14, 0)),
            ("PT30M", ea(0, 0, 1800)),
            ("P30M", ea(30, 0, 0)),
            ("p1dt2h3m4s", ea(0, 1, 2 * 3600 + 3 * 60 + 4)),
            ("pt45s", ea(0, 0, 45)),
            ("12h", ea(0, 0, 12 * 3600)),
            ("P1Y2M3W4D", ea(14, 25, 0)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_expire_after(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejected_forms_name_the_input() {
        for (input, why) in [
            ("", "empty"),
            ("P", "empty"),
            ("PD", "expected a number"),
            ("P30", "no unit"),
            ("P30X", "unknown unit"),
            ("P0D", "zero"),
            ("PT0S", "zero"),
            ("P1.5D", "unknown unit '.'"),
            ("PT1D", "after 'T'"),
            ("PT1HT2M", "twice"),
            ("P99999999999999999999D", "too large"),
            ("P5000000000D", "too many days"),
            ("soon", "expected a number"),
        ] {
            let err = parse_expire_after(input).unwrap_err();
            assert!(err.contains(&format!("{input:?}")), "{err}");
            assert!(err.contains(why), "{input}: {err}");
        }
    }

    #[test]
    fn the_cap_bounds_every_expiry() {
        let now = Utc.with_ymd_and_hms(2026, 3, 31, 12, 0, 0).unwrap();
        let cap = ea(0, 30, 0);
        // A longer ExpireAfter is cut to the cap; a shorter one stays.
        assert_eq!(
            cache_valid_since(Some(ea(0, 365, 0)), cap, now),
            cap.earliest_valid(now)
        );
        assert_eq!(
            cache_valid_since(Some(ea(0, 0, 3600)), cap, now),
            ea(0, 0, 3600).earliest_valid(now)
        );
        // No ExpireAfter: the cap.
        assert_eq!(cache_valid_since(None, cap, now), cap.earliest_valid(now));
    }

    #[test]
    fn earliest_valid_subtracts_calendar_months_then_days_and_seconds() {
        let now = Utc.with_ymd_and_hms(2024, 3, 31, 12, 0, 0).unwrap();
        let got = ea(1, 1, 3600).earliest_valid(now);
        // 2024-02-29 (month clamps), minus a day, minus an hour.
        assert_eq!(got, Utc.with_ymd_and_hms(2024, 2, 28, 11, 0, 0).unwrap());
        assert_eq!(ea(u32::MAX, 0, 0).earliest_valid(now), DateTime::<Utc>::MIN_UTC);
        assert_eq!(ea(0, 0, u64::MAX).earliest_valid(now), DateTime::<Utc>::MIN_UTC);
    }
}
