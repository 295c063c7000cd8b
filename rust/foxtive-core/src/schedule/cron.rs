//! When a schedule fires: a cron expression in an IANA time zone, or every
//! N seconds.
//!
//! The cron arithmetic is the `croner` crate (with `chrono-tz` for the zone
//! database). Chosen over `cron` + `chrono-tz` because:
//! * `croner` reads the standard 5-field form *and* 6 fields with seconds
//!   (`cron` requires the seconds field, so `"*/5 * * * *"` is an error there);
//! * it handles DST the way operators expect and documents it (the OCPS
//!   rules, with tests): a fixed-time job whose wall-clock time falls in a
//!   spring-forward gap runs once, at the first instant after the gap; in a
//!   fall-back overlap it runs once, at the earlier instant; interval and
//!   wildcard jobs keep to real elapsed time. `cron` documents no policy
//!   for gaps and overlaps, so we would have to write and test one;
//! * it follows Vixie/POSIX day-of-month OR day-of-week semantics, has
//!   `L`, `W`, `#`, the `@daily`-style aliases, and is actively maintained.
//!
//! `every` ticks are aligned to the Unix epoch (multiples of the period in
//! UTC), so every process computes the same ticks without talking.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

use crate::{Error, Result};

/// How a schedule fires.
#[derive(Debug, Clone)]
pub enum Trigger {
    Cron {
        expr: String,
        cron: Box<Cron>,
        tz: Tz,
    },
    Every {
        period_secs: u64,
        tz: Tz,
    },
}

fn zone(tz: &str) -> Result<Tz> {
    tz.parse::<Tz>().map_err(|_| {
        Error::Config(format!(
            "tz: unknown time zone {tz:?} (an IANA name such as \"UTC\" or \"Europe/Berlin\")"
        ))
    })
}

impl Trigger {
    /// A standard 5-field cron expression (minute granularity) or 6 fields
    /// with seconds first, evaluated in time zone `tz`.
    pub fn cron(expr: &str, tz: &str) -> Result<Self> {
        let tz = zone(tz)?;
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(Error::Config(format!(
                "cron: expected 5 fields (minute hour day month weekday) or 6 (with seconds \
                 first), got {fields} in {expr:?}"
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| Error::Config(format!("cron: {expr:?} is not a valid expression: {e}")))?;
        Ok(Trigger::Cron {
            expr: expr.trim().to_string(),
            cron: Box::new(cron),
            tz,
        })
    }

    /// Every `period` (whole seconds, at least one), aligned to the epoch.
    pub fn every(period: Duration, tz: &str) -> Result<Self> {
        let tz = zone(tz)?;
        if period < Duration::from_secs(1) || period.subsec_nanos() != 0 {
            return Err(Error::Config(format!(
                "every: must be a whole number of seconds, at least 1, got {}",
                period.as_secs_f64()
            )));
        }
        Ok(Trigger::Every {
            period_secs: period.as_secs(),
            tz,
        })
    }

    /// The time zone ticks are computed and shown in.
    pub fn tz(&self) -> Tz {
        match self {
            Trigger::Cron { tz, .. } | Trigger::Every { tz, .. } => *tz,
        }
    }

    /// What identifies this trigger: a stored last tick written under another
    /// fingerprint (the schedule was changed) is not caught up from.
    pub fn fingerprint(&self) -> String {
        match self {
            Trigger::Cron { expr, tz, .. } => format!("cron:{expr}@{}", tz.name()),
            Trigger::Every { period_secs, .. } => format!("every:{period_secs}"),
        }
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Trigger::Cron { cron, tz, .. } => cron
                .find_next_occurrence(&after.with_timezone(tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Trigger::Every { period_secs, .. } => {
                let p = i64::try_from(*period_secs).ok()?;
                let next = after
                    .timestamp()
                    .div_euclid(p)
                    .checked_add(1)?
                    .checked_mul(p)?;
                Utc.timestamp_opt(next, 0).single()
            }
        }
    }

    /// The latest tick at or before `at`.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Trigger::Cron { cron, tz, .. } => cron
                .find_previous_occurrence(&at.with_timezone(tz), true)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Trigger::Every { period_secs, .. } => {
                let p = i64::try_from(*period_secs).ok()?;
                Utc.timestamp_opt(at.timestamp().div_euclid(p).checked_mul(p)?, 0)
                    .single()
            }
        }
    }

    /// The next `n` ticks strictly after `after`.
    pub fn next_ticks(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = after;
        while out.len() < n {
            match self.next_after(cursor) {
                Some(t) => {
                    out.push(t);
                    cursor = t;
                }
                None => break,
            }
        }
        out
    }

    /// `t` in the schedule's time zone, with its offset.
    pub fn local(&self, t: DateTime<Utc>) -> DateTime<FixedOffset> {
        t.with_timezone(&self.tz()).fixed_offset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn local(tr: &Trigger, after: &str, n: usize) -> Vec<String> {
        tr.next_ticks(utc(after), n)
            .into_iter()
            .map(|t| tr.local(t).to_rfc3339())
            .collect()
    }

    #[test]
    fn five_and_six_fields_and_nothing_else() {
        let five = Trigger::cron("*/5 * * * *", "UTC").unwrap();
        assert_eq!(
            five.next_ticks(utc("2026-01-01T00:00:00Z"), 2),
            [utc("2026-01-01T00:05:00Z"), utc("2026-01-01T00:10:00Z")]
        );
        let six = Trigger::cron("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(
            six.next_after(utc("2026-01-01T00:00:00.500Z")),
            Some(utc("2026-01-01T00:00:10Z"))
        );
        for bad in ["* * * *", "0 0 0 1 1 * 2027", "61 * * * *", "nonsense"] {
            assert!(Trigger::cron(bad, "UTC").is_err(), "{bad}");
        }
        assert!(Trigger::cron("0 9 * * MON", "Mars/Olympus").is_err());
    }

    #[test]
    fn every_is_aligned_to_the_epoch() {
        let tr = Trigger::every(Duration::from_secs(10), "UTC").unwrap();
        assert_eq!(
            tr.next_ticks(utc("2026-01-01T00:00:03Z"), 2),
            [utc("2026-01-01T00:00:10Z"), utc("2026-01-01T00:00:20Z")]
        );
        assert_eq!(
            tr.latest_at_or_before(utc("2026-01-01T00:00:10Z")),
            Some(utc("2026-01-01T00:00:10Z"))
        );
        assert!(Trigger::every(Duration::from_millis(1500), "UTC").is_err());
        assert!(Trigger::every(Duration::ZERO, "UTC").is_err());
    }

    // DST, 2026. Europe/Berlin: spring forward 29 March 02:00 CET -> 03:00
    // CEST; fall back 25 October 03:00 CEST -> 02:00 CET. America/New_York:
    // spring forward 8 March 02:00 EST -> 03:00 EDT; fall back 1 November
    // 02:00 EDT -> 01:00 EST.

    #[test]
    fn berlin_spring_forward_runs_a_0230_job_once_at_0300() {
        let tr = Trigger::cron("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            local(&tr, "2026-03-28T12:00:00Z", 3),
            [
                "2026-03-29T03:00:00+02:00", // 02:30 does not exist: the first instant after the gap
                "2026-03-30T02:30:00+02:00",
                "2026-03-31T02:30:00+02:00",
            ]
        );
    }

    #[test]
    fn berlin_fall_back_runs_a_0230_job_once() {
        let tr = Trigger::cron("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            local(&tr, "2026-10-24T12:00:00Z", 3),
            [
                "2026-10-25T02:30:00+02:00", // the earlier 02:30 (CEST) only
                "2026-10-26T02:30:00+01:00",
                "2026-10-27T02:30:00+01:00",
            ]
        );
        // Evaluated from inside the overlap, after the first 02:30: not again.
        assert_eq!(
            local(&tr, "2026-10-25T00:45:00Z", 1), // 02:45 CEST
            ["2026-10-26T02:30:00+01:00"]
        );
    }

    #[test]
    fn berlin_hourly_job_keeps_to_real_time_across_both_changes() {
        let tr = Trigger::cron("0 * * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            local(&tr, "2026-03-29T00:30:00Z", 2), // 01:30 CET
            ["2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"]
        );
        assert_eq!(
            local(&tr, "2026-10-24T23:30:00Z", 3), // 01:30 CEST
            [
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:00:00+01:00", // the repeated hour is a real hour later
                "2026-10-25T03:00:00+01:00",
            ]
        );
    }

    #[test]
    fn new_york_spring_forward_runs_a_0230_job_once_at_0300() {
        let tr = Trigger::cron("30 2 * * *", "America/New_York").unwrap();
        assert_eq!(
            local(&tr, "2026-03-07T12:00:00Z", 3),
            [
                "2026-03-08T03:00:00-04:00",
                "2026-03-09T02:30:00-04:00",
                "2026-03-10T02:30:00-04:00",
            ]
        );
    }

    #[test]
    fn new_york_fall_back_runs_a_0130_job_once() {
        let tr = Trigger::cron("30 1 * * *", "America/New_York").unwrap();
        assert_eq!(
            local(&tr, "2026-10-31T12:00:00Z", 3),
            [
                "2026-11-01T01:30:00-04:00", // the earlier 01:30 (EDT) only
                "2026-11-02T01:30:00-05:00",
                "2026-11-03T01:30:00-05:00",
            ]
        );
        // In UTC: one day and one hour between the first two runs.
        let ticks = tr.next_ticks(utc("2026-10-31T12:00:00Z"), 2);
        assert_eq!(ticks[0], utc("2026-11-01T05:30:00Z"));
        assert_eq!(ticks[1], utc("2026-11-02T06:30:00Z"));
    }

    #[test]
    fn latest_tick_looks_back_in_the_zone() {
        let tr = Trigger::cron("0 9 * * MON", "Europe/Berlin").unwrap();
        assert_eq!(
            tr.latest_at_or_before(utc("2026-11-30T12:00:00Z")),
            Some(utc("2026-11-30T08:00:00Z"))
        );
    }
}
