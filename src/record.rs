//! The session record: what a store keeps for one session.

use std::collections::BTreeMap;
use std::time::Duration;

use ciborium::Value;

use crate::token::SessionId;

/// Milliseconds since the Unix epoch, on the application's clock.
pub type Millis = u64;

/// The values a session holds: string keys to CBOR values.
pub type Data = BTreeMap<String, Value>;

/// One session as a store keeps it.
///
/// The store seals `user`, `kind`, `created_at`, `idle_timeout`,
/// `absolute_deadline` and `data` with HMAC-SHA256; `version` and
/// `last_seen` are the store's own bookkeeping (the lock version, and the
/// last time sliding expiry moved the idle deadline).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The session's id (a hash of its token).
    pub id: SessionId,
    /// The user the session belongs to; `None` for an anonymous session.
    pub user: Option<String>,
    /// A label for the family of the session (`"web"`, `"api"`, ...): a
    /// user's sessions can be listed and revoked per kind.
    pub kind: String,
    /// When the session was created.
    pub created_at: Millis,
    /// When the session was last seen: written by saves, and by loads when
    /// sliding expiry moves the idle deadline (at most once per touch
    /// interval).
    pub last_seen: Millis,
    /// The session ends after this long without being seen (sliding expiry).
    pub idle_timeout: Option<Duration>,
    /// The session ends at this time whatever its activity.
    pub absolute_deadline: Option<Millis>,
    /// Lock version: 0 for a session never saved, then the version the store
    /// returned. A save succeeds only if the stored version still equals it.
    pub version: u64,
    /// The session's values.
    pub data: Data,
    /// What the application calls this session in a "your devices" listing
    /// (for instance `"Firefox on Linux"`); see [`Session::set_label`](crate::Session::set_label).
    pub label: Option<String>,
    /// Small fields the application keeps about the session, listed with it
    /// (for instance the user agent at login); see
    /// [`Session::set_metadata`](crate::Session::set_metadata).
    pub metadata: Metadata,
}

/// A session's metadata: short text fields chosen by the application, at
/// most [`MAX_METADATA_FIELDS`] of them, keys up to
/// [`MAX_METADATA_KEY`] and values up to [`MAX_METADATA_VALUE`] bytes.
pub type Metadata = BTreeMap<String, String>;

/// The most metadata fields a session holds.
pub const MAX_METADATA_FIELDS: usize = 16;
/// The longest metadata key, in bytes.
pub const MAX_METADATA_KEY: usize = 64;
/// The longest metadata value (and label), in bytes.
pub const MAX_METADATA_VALUE: usize = 512;

impl Record {
    /// A new, unsaved record (version 0).
    pub fn new(id: SessionId, kind: impl Into<String>, now: Millis) -> Record {
        Record {
            id,
            user: None,
            kind: kind.into(),
            created_at: now,
            last_seen: now,
            idle_timeout: None,
            absolute_deadline: None,
            version: 0,
            data: Data::new(),
            label: None,
            metadata: Metadata::new(),
        }
    }

    /// Whether a store holds this record: a save returned its version.
    /// Version 0 is a session created by this request and not saved yet.
    pub fn is_stored(&self) -> bool {
        self.version > 0
    }

    /// When the session ends unless seen again: the earlier of the idle and
    /// the absolute deadline; `None` if it has neither.
    pub fn deadline(&self) -> Option<Millis> {
        deadline(
            self.last_seen,
            self.idle_timeout.map(millis),
            self.absolute_deadline,
        )
    }

    /// `last_seen` plus the idle timeout.
    pub fn idle_deadline(&self) -> Option<Millis> {
        self.idle_timeout
            .map(|idle| self.last_seen.saturating_add(millis(idle)))
    }

    /// Whether the session has ended by `now`.
    pub fn is_expired(&self, now: Millis) -> bool {
        self.deadline().is_some_and(|d| d <= now)
    }
}

/// When a session last seen at `last_seen` ends: the earlier of the idle
/// deadline (`idle` ms after it) and the absolute one; `None` if it has
/// neither. The one definition in Rust (the Lua library has its twin), used by
/// records and by the memory store's entries alike.
pub(crate) fn deadline(
    last_seen: Millis,
    idle: Option<u64>,
    absolute: Option<Millis>,
) -> Option<Millis> {
    let idle = idle.map(|idle| last_seen.saturating_add(idle));
    match (idle, absolute) {
        (Some(i), Some(a)) => Some(i.min(a)),
        (i, a) => i.or(a),
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The application's clock.
pub(crate) fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}
