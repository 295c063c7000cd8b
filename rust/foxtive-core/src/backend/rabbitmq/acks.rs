//! Which acknowledgement frames to send for a set of settled delivery tags.
//!
//! A channel numbers its deliveries 1, 2, 3… and the broker keeps every
//! unsettled one. `basic.ack(multiple=true, tag=T)` settles *all* unsettled
//! tags up to `T`, so it is only safe when every tag up to `T` is being
//! acked now or was settled before. The tracker keeps the highest tag below
//! which everything is settled (the floor) and the settled tags above it.

use std::collections::BTreeSet;

/// One frame to send: ack `tag`, covering everything unsettled below it when `multiple`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckFrame {
    pub tag: u64,
    pub multiple: bool,
}

#[derive(Debug, Default)]
pub struct AckTracker {
    /// Every tag `<= floor` is settled.
    floor: u64,
    /// Settled tags above the floor (sent on their own).
    above: BTreeSet<u64>,
}

impl AckTracker {
    /// Record tags settled some other way (nack, or acked alone); they must
    /// be sent before any later `plan` result.
    pub fn settled_elsewhere(&mut self, tags: impl IntoIterator<Item = u64>) {
        for tag in tags {
            if tag > self.floor {
                self.above.insert(tag);
            }
        }
        self.raise_floor();
    }

    fn raise_floor(&mut self) {
        while self.above.first() == Some(&(self.floor + 1)) {
            self.above.pop_first();
            self.floor += 1;
        }
    }

    /// The frames that ack `tags` (each unsettled, none repeated): one
    /// `multiple` frame for the run that joins the floor, single frames for
    /// the rest.
    pub fn plan(&mut self, mut tags: Vec<u64>) -> Vec<AckFrame> {
        tags.sort_unstable();
        tags.dedup();
        tags.retain(|&t| t > self.floor);
        let mut frames = Vec::new();
        let mut multiple_to: Option<u64> = None;
        for tag in tags {
            if tag == self.floor + 1 {
                self.floor = tag;
                multiple_to = Some(tag);
                // Tags settled earlier directly above join the run.
                while self.above.first() == Some(&(self.floor + 1)) {
                    self.above.pop_first();
                    self.floor += 1;
                }
            } else {
                self.above.insert(tag);
                frames.push(AckFrame {
                    tag,
                    multiple: false,
                });
            }
        }
        if let Some(tag) = multiple_to {
            frames.push(AckFrame {
                tag,
                multiple: true,
            });
        }
        // A later tag of this batch may have closed a gap below singles.
        self.raise_floor();
        frames
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_tags_make_one_multiple_ack() {
        let mut t = AckTracker::default();
        assert_eq!(
            t.plan(vec![3, 1, 2]),
            vec![AckFrame {
                tag: 3,
                multiple: true
            }]
        );
        assert_eq!(t.floor(), 3);
    }

    #[test]
    fn gaps_are_acked_alone_and_never_covered() {
        let mut t = AckTracker::default();
        // 1 and 2 in flight: 3 and 5 alone.
        let frames = t.plan(vec![3, 5]);
        assert_eq!(
            frames,
            vec![
                AckFrame {
                    tag: 3,
                    multiple: false
                },
                AckFrame {
                    tag: 5,
                    multiple: false
                }
            ]
        );
        // 1 and 2 now: multiple up to 2 only (3 was acked already and must
        // not be the tag of a multiple frame).
        assert_eq!(
            t.plan(vec![2, 1]),
            vec![AckFrame {
                tag: 2,
                multiple: true
            }]
        );
        assert_eq!(t.floor(), 3);
        // 4 closes the gap to 5.
        assert_eq!(
            t.plan(vec![4]),
            vec![AckFrame {
                tag: 4,
                multiple: true
            }]
        );
        assert_eq!(t.floor(), 5);
    }

    #[test]
    fn nacked_tags_let_the_floor_pass() {
        let mut t = AckTracker::default();
        t.settled_elsewhere([1]);
        assert_eq!(t.floor(), 1);
        assert_eq!(
            t.plan(vec![2, 3]),
            vec![AckFrame {
                tag: 3,
                multiple: true
            }]
        );
        t.settled_elsewhere([5]);
        assert_eq!(
            t.plan(vec![4]),
            vec![AckFrame {
                tag: 4,
                multiple: true
            }]
        );
        assert_eq!(t.floor(), 5);
        assert!(t.plan(vec![5, 1]).is_empty());
    }
}
