//! Turns for saving a session, within one process: see
//! [`SessionStore::save_turn`](crate::store::SessionStore::save_turn).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OwnedMutexGuard;

use crate::token::SessionId;

type Table = HashMap<SessionId, Arc<tokio::sync::Mutex<()>>>;

/// Per-session turns for saving, within one process.
///
/// Concurrent requests of one session in one process would otherwise all
/// send their saves at once, and all but one would conflict, again and
/// again. Taking turns, a request's save meets at most one conflict from
/// this process (its record may be older than the last save): the conflict
/// reply carries the current record and the immediate retry succeeds unless
/// another process wrote meanwhile.
#[derive(Default)]
pub(crate) struct SaveLocks {
    turns: Mutex<Table>,
}

impl std::fmt::Debug for SaveLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaveLocks").finish_non_exhaustive()
    }
}

/// A session's turn to save, from
/// [`SessionStore::save_turn`](crate::store::SessionStore::save_turn);
/// released (and forgotten if nobody waits) on drop.
#[must_use = "the turn is released when this guard drops"]
pub struct SaveTurn<'a> {
    held: Option<(&'a SaveLocks, SessionId, OwnedMutexGuard<()>)>,
}

impl SaveTurn<'_> {
    /// No turn at all: for stores whose saves need none.
    pub fn none() -> SaveTurn<'static> {
        SaveTurn { held: None }
    }
}

impl std::fmt::Debug for SaveTurn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaveTurn")
            .field("held", &self.held.is_some())
            .finish()
    }
}

impl SaveLocks {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.turns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) async fn turn(&self, id: SessionId) -> SaveTurn<'_> {
        let lock = self.table().entry(id).or_default().clone();
        let turn = lock.lock_owned().await;
        SaveTurn {
            held: Some((self, id, turn)),
        }
    }
}

impl Drop for SaveTurn<'_> {
    fn drop(&mut self) {
        let Some((locks, id, turn)) = self.held.take() else {
            return;
        };
        let mut table = locks.table();
        drop(turn);
        // Only the table holds it now: nobody waits, forget it.
        if table.get(&id).is_some_and(|l| Arc::strong_count(l) == 1) {
            table.remove(&id);
        }
    }
}
