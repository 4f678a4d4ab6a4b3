//! What every store operation tells an operator: a `tracing` span per call
//! and, with the `metrics` feature, counters and a latency histogram through
//! the `metrics` facade. Never a token, a session id, a key or a value: only
//! the operation, its outcome, the attempts it took and how long it ran.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | span `session_store` | `tracing` span (INFO) | `op`, `outcome`, `attempts`, `duration_us` |
//! | `tower_redis_sessions_store_operations_total` | counter | `op`, `outcome` |
//! | `tower_redis_sessions_store_operation_seconds` | histogram | `op` |
//! | `tower_redis_sessions_rejected_blobs_total` | counter | |
//!
//! `op` is one of `load`, `save`, `rotate`, `delete`, `retire`, `list`,
//! `revoke`, `revoke_all`; `outcome` one of `hit`, `miss`, `saved`,
//! `conflict`, `gone`, `deleted`, `absent`, `ok`, `unavailable`, `error`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing::Instrument;

use crate::record::Record;
use crate::store::{RetireOutcome, SaveOutcome, StoreError};

/// How a successful result is reported.
pub(crate) trait Outcome {
    fn outcome(&self) -> &'static str;
}

impl Outcome for Option<Record> {
    fn outcome(&self) -> &'static str {
        if self.is_some() { "hit" } else { "miss" }
    }
}

impl Outcome for SaveOutcome {
    fn outcome(&self) -> &'static str {
        match self {
            SaveOutcome::Saved { .. } => "saved",
            SaveOutcome::Conflict(_) => "conflict",
            SaveOutcome::Gone => "gone",
        }
    }
}

impl Outcome for RetireOutcome {
    fn outcome(&self) -> &'static str {
        match self {
            RetireOutcome::Deleted => "deleted",
            RetireOutcome::Conflict(_) => "conflict",
            RetireOutcome::Gone => "gone",
        }
    }
}

impl Outcome for bool {
    fn outcome(&self) -> &'static str {
        if *self { "deleted" } else { "absent" }
    }
}

impl Outcome for u64 {
    fn outcome(&self) -> &'static str {
        "ok"
    }
}

impl Outcome for Vec<Record> {
    fn outcome(&self) -> &'static str {
        "ok"
    }
}

/// The counters every store keeps for [`StoreStats`](crate::StoreStats).
#[derive(Default)]
pub(crate) struct Calls {
    pub(crate) operations: AtomicU64,
    pub(crate) unavailable: AtomicU64,
}

/// Runs one store operation inside its span, and reports it.
pub(crate) async fn observe<T: Outcome>(
    calls: &Calls,
    op: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let span = tracing::info_span!(
        "session_store",
        op,
        outcome = tracing::field::Empty,
        attempts = 1u32,
        duration_us = tracing::field::Empty,
    );
    let started = Instant::now();
    let result = call.instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let outcome = match &result {
        Ok(value) => value.outcome(),
        Err(e) if e.is_unavailable() => "unavailable",
        Err(_) => "error",
    };
    span.record("outcome", outcome);
    span.record(
        "duration_us",
        u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
    );
    calls.operations.fetch_add(1, Ordering::Relaxed);
    if outcome == "unavailable" {
        calls.unavailable.fetch_add(1, Ordering::Relaxed);
    }
    #[cfg(feature = "metrics")]
    {
        metrics::counter!(
            "tower_redis_sessions_store_operations_total",
            "op" => op,
            "outcome" => outcome
        )
        .increment(1);
        metrics::histogram!("tower_redis_sessions_store_operation_seconds", "op" => op)
            .record(elapsed.as_secs_f64());
    }
    result
}

/// Notes, in the current operation's span, that the call was sent again
/// (the function library re-registered, or a connection replaced).
pub(crate) fn another_attempt(attempts: u32) {
    tracing::Span::current().record("attempts", attempts);
}

/// Reports a stored blob that failed verification.
pub(crate) fn rejected_blob() {
    #[cfg(feature = "metrics")]
    metrics::counter!("tower_redis_sessions_rejected_blobs_total").increment(1);
}
