//! The outbox: events are written in the same transaction as the state they announce and a
//! relay publishes them until the stream acknowledges, so a crash after a commit loses nothing.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;

use crate::Shutdown;
use crate::bus::Bus;
use crate::metrics::Metrics;

/// Queues an event inside the caller's transaction; it is published after the commit.
pub async fn enqueue(tx: &mut PgConnection, subject: &str, msg_id: &str, payload: &[u8]) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO outbox (subject, msg_id, payload) VALUES ($1, $2, $3)")
        .bind(subject)
        .bind(msg_id)
        .bind(payload)
        .execute(tx)
        .await?;
    Ok(())
}

/// Wakes the relay of this process (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct RelayHandle {
    notify: Arc<Notify>,
    scope: RelayScope,
}

impl RelayHandle {
    /// The rows this process's relay publishes.
    pub fn scope(&self) -> &RelayScope {
        &self.scope
    }

    /// Asks the relay to publish now instead of at its next tick.
    pub fn kick(&self) {
        self.notify.notify_one();
    }
}

/// Which outbox rows a relay may publish: all, or those whose subject matches one of the NATS
/// patterns its bus user is allowed (the rest are left to the relays of other services).
#[derive(Clone, Debug, Default)]
pub struct RelayScope {
    like: Option<Vec<String>>,
}

impl RelayScope {
    /// Every row.
    pub fn all() -> RelayScope {
        RelayScope { like: None }
    }

    /// Rows whose subject matches one of `patterns` (NATS wildcards).
    pub fn subjects(patterns: &[String]) -> RelayScope {
        RelayScope { like: Some(patterns.iter().map(|p| like_pattern(p)).collect()) }
    }
}

/// A NATS subject pattern as an SQL LIKE pattern (`*` and `>` become `%`; LIKE's own wildcards
/// are escaped).
fn like_pattern(nats: &str) -> String {
    nats.split('.')
        .map(|t| match t {
            "*" | ">" => "%".to_string(),
            t => t.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Publishes pending outbox rows in `scope`, oldest first, at most `batch` per call; returns how
/// many were published. Rows are locked with SKIP LOCKED, so relays in several processes share
/// the work; the `Nats-Msg-Id` makes a row published twice (a crash after publish, before the
/// update) arrive once.
pub async fn relay_once(
    pool: &PgPool,
    bus: &Bus,
    metrics: &Metrics,
    batch: i64,
    scope: &RelayScope,
) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(i64, String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT id, subject, msg_id, payload FROM outbox
         WHERE published_at IS NULL AND ($2::text[] IS NULL OR subject LIKE ANY($2))
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(batch)
    .bind(scope.like.as_deref())
    .fetch_all(&mut *tx)
    .await?;
    let mut published = 0;
    let mut failure = None;
    for (id, subject, msg_id, payload) in rows {
        match bus.publish(subject, &msg_id, payload).await {
            Ok(()) => {
                sqlx::query("UPDATE outbox SET published_at = now(), attempts = attempts + 1 WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                published += 1;
            }
            Err(e) => {
                metrics.outbox_failed();
                sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1")
                    .bind(id)
                    .bind(format!("{e:#}"))
                    .execute(&mut *tx)
                    .await?;
                // Keep the order: later events wait for this one.
                failure = Some(e);
                break;
            }
        }
    }
    tx.commit().await?;
    metrics.outbox_published(published as u64);
    match failure {
        Some(e) if published == 0 => Err(e),
        _ => Ok(published),
    }
}

/// Number of events not yet published.
pub async fn pending(pool: &PgPool) -> sqlx::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(pool).await?;
    Ok(n)
}

/// Starts this process's relay: it publishes when kicked and every `tick`, until shutdown,
/// and makes a last pass on the way out.
pub fn spawn_relay(
    pool: PgPool,
    bus: Bus,
    metrics: Metrics,
    shutdown: Shutdown,
    tick: Duration,
    scope: RelayScope,
) -> RelayHandle {
    let handle = RelayHandle { notify: Arc::default(), scope: scope.clone() };
    let notify = handle.notify.clone();
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let stop = shutdown.is_triggered();
            match relay_once(&pool, &bus, &metrics, 64, &scope).await {
                Ok(64) => {
                    failures = 0;
                    continue;
                }
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            failures,
                            "outbox relay could not publish; will retry"
                        );
                    }
                }
            }
            if let Ok(n) = pending(&pool).await {
                metrics.set_outbox_pending(n);
            }
            if stop {
                break;
            }
            let wait = if failures > 0 { tick * failures.min(10) } else { tick };
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => {}
            }
        }
    });
    handle
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn nats_patterns_become_like_patterns() {
        assert_eq!(like_pattern("gmmas.*.scan.ingested"), "gmmas.%.scan.ingested");
        assert_eq!(like_pattern("gmmas._models.model.candidate"), "gmmas.\\_models.model.candidate");
        assert_eq!(like_pattern("a.>"), "a.%");
    }
}
