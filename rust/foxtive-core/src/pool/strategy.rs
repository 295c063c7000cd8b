//! Which worker gets the next message.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Workers in turn: 1, 2, 3, 1, 2, 3...
    #[default]
    RoundRobin,
    /// A random worker with room.
    Random,
    /// The worker with the fewest messages in flight.
    LeastLoaded,
}

impl FromStr for Strategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "round_robin" | "roundrobin" => Ok(Strategy::RoundRobin),
            "random" => Ok(Strategy::Random),
            "least_loaded" | "leastloaded" => Ok(Strategy::LeastLoaded),
            other => Err(Error::Config(format!(
                "strategy: unknown value {other:?}; allowed: ROUND_ROBIN, RANDOM, LEAST_LOADED"
            ))),
        }
    }
}

/// Picks a worker among those with room. `loads[i]` and `limits[i]` describe
/// worker `i`; `None` means every worker is full.
pub struct Picker {
    strategy: Strategy,
    cursor: AtomicUsize,
}

impl Picker {
    pub fn new(strategy: Strategy) -> Self {
        Picker {
            strategy,
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn pick(&self, loads: &[usize], limits: &[usize]) -> Option<usize> {
        let n = loads.len();
        if n == 0 {
            return None;
        }
        let has_room = |i: usize| loads[i] < limits[i];
        match self.strategy {
            Strategy::RoundRobin => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                let found = (0..n).map(|k| (start + k) % n).find(|&i| has_room(i));
                if let Some(i) = found {
                    // Continue after the chosen worker next time, so skipping
                    // a full worker does not bias towards its successor.
                    self.cursor.store(i + 1, Ordering::Relaxed);
                }
                found
            }
            Strategy::Random => {
                let start = if n == 1 {
                    0
                } else {
                    rand::rng().random_range(0..n)
                };
                (0..n).map(|k| (start + k) % n).find(|&i| has_room(i))
            }
            Strategy::LeastLoaded => (0..n).filter(|&i| has_room(i)).min_by_key(|&i| loads[i]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_and_skips_full_workers() {
        let p = Picker::new(Strategy::RoundRobin);
        let limits = [10, 10, 10];
        let picks: Vec<_> = (0..6)
            .map(|_| p.pick(&[0, 0, 0], &limits).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(p.pick(&[0, 10, 0], &limits), Some(0));
        assert_eq!(p.pick(&[10, 10, 10], &limits), None);
    }

    #[test]
    fn least_loaded_prefers_the_idlest() {
        let p = Picker::new(Strategy::LeastLoaded);
        assert_eq!(p.pick(&[3, 1, 2], &[10, 10, 10]), Some(1));
        assert_eq!(p.pick(&[3, 1, 2], &[10, 1, 10]), Some(2));
    }

    #[test]
    fn random_only_picks_workers_with_room() {
        let p = Picker::new(Strategy::Random);
        for _ in 0..100 {
            assert_eq!(p.pick(&[5, 0, 5], &[5, 5, 5]), Some(1));
        }
    }

    #[test]
    fn parses_names() {
        assert_eq!(
            "LEAST_LOADED".parse::<Strategy>().unwrap(),
            Strategy::LeastLoaded
        );
        assert_eq!(
            "round_robin".parse::<Strategy>().unwrap(),
            Strategy::RoundRobin
        );
        assert!("fastest".parse::<Strategy>().is_err());
    }
}
