//! Schedules: cron and interval triggers whose ticks are enqueued once,
//! however many processes run a scheduler.
//!
//! * [`cron`]: when a schedule fires (cron in a time zone, or every N seconds).
//! * [`catch_up`]: what to enqueue for ticks missed while no scheduler led.
//! * [`leader`]: the lease in the broker itself that elects one scheduler.
//! * [`store`]: the last enqueued tick of each schedule, in the broker too.
//! * [`scheduler`]: the loop that ties them together and enqueues ticks.
//!
//! Each tick is a message whose id is `"<name>@YYYY-MM-DDTHH:MM:SSZ"`
//! ([`tick_id`]), so that a tick published twice (two schedulers that both
//! believe they lead) is one task where the backend deduplicates by id.

pub mod brokers;
pub mod catch_up;
pub mod cron;
pub mod leader;
pub mod scheduler;
pub mod store;

use chrono::SecondsFormat;
pub use chrono::{DateTime, Utc};

pub use catch_up::CatchUp;
pub use cron::Trigger;
pub use leader::{Holder, LeaderInfo, LeaderLease, Lease};
pub use scheduler::{Schedule, ScheduleMetrics, Scheduler, SchedulerSettings};
pub use store::{Stored, TickStore};

/// A tick's message id: `"<schedule name>@<tick time, ISO 8601 UTC, seconds>"`.
pub fn tick_id(name: &str, tick: DateTime<Utc>) -> String {
    format!("{name}@{}", iso_utc(tick))
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn iso_utc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn tick_ids_are_the_name_and_the_utc_second() {
        let t = Utc.with_ymd_and_hms(2026, 3, 29, 1, 30, 0).unwrap();
        assert_eq!(tick_id("digest", t), "digest@2026-03-29T01:30:00Z");
    }
}
