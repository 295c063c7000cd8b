//! One write connection per database file in a process, shared by every
//! backend (queue) on that file: an app running five queues from one file
//! holds one connection, not five.
//!
//! SQLite lets one connection write a file at a time, so the queues lose no
//! parallelism: they used to wait for each other on the file lock (sleeping
//! with back-off inside `busy_timeout`), now they queue on the slot's mutex
//! (fair, woken at once). Every statement of a backend runs inside one
//! `with_conn` closure, a whole transaction included, so no queue ever sees
//! another's open transaction.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::Connection;

use crate::backend::shared::SharedByKey;

/// A connection slot: opened on first use by whichever backend needs it,
/// closed when the last backend holding the slot lets go of it.
pub(crate) type Slot = Arc<Mutex<Option<Connection>>>;

type Key = (PathBuf, Duration);

/// The live slots by file (and busy timeout, a setting of the connection).
static SLOTS: SharedByKey<Key, Mutex<Option<Connection>>> = SharedByKey::new();

/// The process's slot for `path`, made if no backend holds one.
pub(crate) fn slot(path: &Path, busy_timeout: Duration) -> Slot {
    // "a.db" and "/cwd/a.db" are one file; a path that cannot be made
    // absolute (no working directory) is used as given.
    let file = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    SLOTS.get_or_make((file, busy_timeout), || Mutex::new(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slot_per_file_until_the_last_holder_lets_go() {
        let dir = std::env::temp_dir();
        let a = dir.join(format!("foxtive-shared-{}.db", std::process::id()));
        let busy = Duration::from_secs(1);
        let first = slot(&a, busy);
        let second = slot(&a, busy);
        assert!(Arc::ptr_eq(&first, &second));
        let other = slot(&dir.join("foxtive-shared-other.db"), busy);
        assert!(!Arc::ptr_eq(&first, &other));
        let weak = Arc::downgrade(&first);
        drop(first);
        drop(second);
        assert!(
            weak.upgrade().is_none(),
            "the slot outlived its last holder"
        );
        let again = slot(&a, busy);
        assert!(Arc::strong_count(&again) == 1);
    }
}
