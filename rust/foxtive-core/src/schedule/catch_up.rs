//! What a scheduler enqueues for one schedule when it looks at the clock.
//!
//! Ticks are *missed* when they fell due while no scheduler led: at or
//! before the moment this scheduler became leader (`leader_since`). Missed
//! ticks follow the schedule's [`CatchUp`] policy; ticks after
//! `leader_since` are the leader's own and are always enqueued (a loop that
//! wakes late, a slow broker round trip, never drops one).

use chrono::{DateTime, Utc};

use super::cron::Trigger;
use crate::{Error, Result};

/// How many ticks one look enqueues at most; the rest follow on the next
/// look (the last tick recorded moves forward each time).
pub const MAX_TICKS_PER_LOOK: usize = 1000;

/// What to do with ticks missed while no scheduler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// One run, for the latest missed tick (the default).
    Latest,
    /// One run per missed tick.
    All,
    /// No run for missed ticks.
    None,
}

impl CatchUp {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "latest" => Ok(CatchUp::Latest),
            "all" => Ok(CatchUp::All),
            "none" => Ok(CatchUp::None),
            other => Err(Error::Config(format!(
                "catch_up: expected \"latest\", \"all\" or \"none\", got {other:?}"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Latest => "latest",
            CatchUp::All => "all",
            CatchUp::None => "none",
        }
    }
}

/// One tick to enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub tick: DateTime<Utc>,
    /// It was missed (enqueued by the catch-up policy).
    pub missed: bool,
}

/// The outcome of one look at one schedule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Ticks to enqueue, oldest first.
    pub due: Vec<Due>,
    /// Missed ticks the policy skips.
    pub skipped: u64,
    /// What to record as the last tick once `due` is enqueued (None: keep).
    pub record: Option<DateTime<Utc>>,
}

/// Ticks in `(last, now]` for `trigger`. `last` is the stored last tick
/// (None: a new or changed schedule, which has nothing to catch up: its mark
/// is set to `now` and its first tick is the next one).
pub fn plan(
    trigger: &Trigger,
    policy: CatchUp,
    last: Option<DateTime<Utc>>,
    leader_since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Plan {
    let Some(last) = last else {
        return Plan {
            due: Vec::new(),
            skipped: 0,
            record: Some(now),
        };
    };
    let mut plan = Plan::default();
    let mut missed: Vec<DateTime<Utc>> = Vec::new();
    let mut cursor = last;
    // Missed ticks: only the count matters for all but the latest few, so
    // the walk is bounded; `every` jumps straight to the latest.
    let mut latest_missed: Option<DateTime<Utc>> = None;
    while let Some(t) = trigger.next_after(cursor) {
        if t > now {
            break;
        }
        if t > leader_since {
            if plan.due.len() >= MAX_TICKS_PER_LOOK {
                break;
            }
            plan.due.push(Due {
                tick: t,
                missed: false,
            });
        } else {
            latest_missed = Some(t);
            if policy == CatchUp::All && missed.len() < MAX_TICKS_PER_LOOK {
                missed.push(t);
            } else if policy != CatchUp::All {
                plan.skipped += 1;
                if plan.skipped as usize > 100_000 {
                    // A very long outage of a very frequent schedule: count
                    // the rest in one step rather than tick by tick.
                    match trigger.latest_at_or_before(leader_since.min(now)) {
                        Some(l) if l > t => {
                            plan.skipped += estimate_between(trigger, t, l) + 1;
                            latest_missed = Some(l);
                            cursor = l;
                            continue;
                        }
                        _ => {}
                    }
                }
            } else {
                // `all`, over the per-look bound: the next look goes on.
                break;
            }
        }
        cursor = t;
    }
    match policy {
        CatchUp::All => {
            let mut due: Vec<Due> = missed
                .into_iter()
                .map(|tick| Due { tick, missed: true })
                .collect();
            if due.len() >= MAX_TICKS_PER_LOOK {
                plan.due.clear(); // the backlog first, in order
            }
            due.append(&mut plan.due);
            plan.due = due;
        }
        CatchUp::Latest => {
            if let Some(tick) = latest_missed {
                plan.skipped -= 1;
                plan.due.insert(0, Due { tick, missed: true });
            }
        }
        CatchUp::None => {}
    }
    plan.record = plan.due.last().map(|d| d.tick).or(latest_missed);
    plan
}

/// Ticks strictly between `a` and `b`, approximately for cron (used only to
/// count what a very long outage skipped).
fn estimate_between(trigger: &Trigger, a: DateTime<Utc>, b: DateTime<Utc>) -> u64 {
    match trigger {
        Trigger::Every { period_secs, .. } => {
            let span = (b - a).num_seconds().max(0) as u64;
            (span / (*period_secs).max(1)).saturating_sub(1)
        }
        Trigger::Cron { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration as Span;
    use std::time::Duration;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn secs(n: i64) -> DateTime<Utc> {
        t0() + Span::seconds(n)
    }

    fn per_second() -> Trigger {
        Trigger::every(Duration::from_secs(1), "UTC").unwrap()
    }

    fn ticks(p: &Plan) -> Vec<(i64, bool)> {
        p.due
            .iter()
            .map(|d| ((d.tick - t0()).num_seconds(), d.missed))
            .collect()
    }

    #[test]
    fn a_new_schedule_catches_nothing_up() {
        let p = plan(&per_second(), CatchUp::All, None, secs(0), secs(5));
        assert!(p.due.is_empty());
        assert_eq!(p.record, Some(secs(5)));
    }

    #[test]
    fn the_leaders_own_ticks_are_always_enqueued() {
        for policy in [CatchUp::Latest, CatchUp::All, CatchUp::None] {
            // Leader since 0, last tick 3, now 6.5 (the loop woke late).
            let p = plan(
                &per_second(),
                policy,
                Some(secs(3)),
                secs(0),
                secs(6) + Span::milliseconds(500),
            );
            assert_eq!(
                ticks(&p),
                [(4, false), (5, false), (6, false)],
                "{policy:?}"
            );
            assert_eq!(p.skipped, 0);
            assert_eq!(p.record, Some(secs(6)));
        }
    }

    #[test]
    fn missed_ticks_follow_the_policy() {
        // Last tick 0; nobody led until 5.5; now 7.
        let since = secs(5) + Span::milliseconds(500);
        let latest = plan(
            &per_second(),
            CatchUp::Latest,
            Some(secs(0)),
            since,
            secs(7),
        );
        assert_eq!(ticks(&latest), [(5, true), (6, false), (7, false)]);
        assert_eq!(latest.skipped, 4);
        let all = plan(&per_second(), CatchUp::All, Some(secs(0)), since, secs(7));
        assert_eq!(
            ticks(&all),
            [
                (1, true),
                (2, true),
                (3, true),
                (4, true),
                (5, true),
                (6, false),
                (7, false)
            ]
        );
        assert_eq!(all.skipped, 0);
        let none = plan(&per_second(), CatchUp::None, Some(secs(0)), since, secs(7));
        assert_eq!(ticks(&none), [(6, false), (7, false)]);
        assert_eq!(none.skipped, 5);
        // Nothing due for the leader yet: the mark still moves past the skipped ones.
        let none = plan(&per_second(), CatchUp::None, Some(secs(0)), since, since);
        assert!(none.due.is_empty());
        assert_eq!(none.record, Some(secs(5)));
    }

    #[test]
    fn a_long_outage_is_counted_without_walking_every_tick() {
        let since = secs(86_400 * 30);
        let p = plan(&per_second(), CatchUp::Latest, Some(secs(0)), since, since);
        assert_eq!(ticks(&p), [(86_400 * 30, true)]);
        assert_eq!(p.skipped, 86_400 * 30 - 1);
        let all = plan(&per_second(), CatchUp::All, Some(secs(0)), since, since);
        assert_eq!(all.due.len(), MAX_TICKS_PER_LOOK);
        assert_eq!(all.record, Some(secs(MAX_TICKS_PER_LOOK as i64)));
    }
}
