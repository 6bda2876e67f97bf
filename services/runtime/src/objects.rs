//! The object ledger: every object a service stores is recorded first as `pending` under the
//! attempt (owner) that writes it and becomes `live` with the commit that references it.
//! Objects whose owner never committed are deleted, so the store holds only what is referenced.

use std::time::Duration;

use gmmas_contracts::ObjectRef;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::bus::Bus;
use crate::metrics::Metrics;

/// Where an object goes and who writes it: the case it belongs to (if any) and the owner whose
/// commit makes it live ([`mark_live`]).
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub case_id: Option<Uuid>,
    pub owner: Uuid,
}

/// Records the object as pending for its owner, then stores the bytes.
pub async fn put_owned(bus: &Bus, pool: &PgPool, at: Placement<'_>, bytes: &[u8]) -> anyhow::Result<ObjectRef> {
    claim(pool, at).await?;
    bus.put_object_in(at.bucket, at.key, bytes).await
}

/// Bytes to store that are read as they go (a spooled upload), with the hash and size the
/// writer already took.
pub struct Source<'a, R> {
    pub reader: &'a mut R,
    pub sha256: &'a str,
    pub size: u64,
}

/// [`put_owned`] from a reader, so that the object never sits in memory whole.
pub async fn put_owned_from<R: tokio::io::AsyncRead + Unpin>(
    bus: &Bus,
    pool: &PgPool,
    at: Placement<'_>,
    source: Source<'_, R>,
) -> anyhow::Result<ObjectRef> {
    claim(pool, at).await?;
    bus.put_object_from(at.bucket, at.key, source.reader, source.sha256, source.size).await
}

async fn claim(pool: &PgPool, at: Placement<'_>) -> anyhow::Result<()> {
    let Placement { bucket, key, case_id, owner } = at;
    let taken = sqlx::query(
        "INSERT INTO objects (bucket, key, case_id, owner, state) VALUES ($1, $2, $3, $4, 'pending')
         ON CONFLICT (bucket, key) DO UPDATE SET owner = $4, created_at = now()
         WHERE objects.state = 'pending' AND objects.owner = $4",
    )
    .bind(bucket)
    .bind(key)
    .bind(case_id)
    .bind(owner)
    .execute(pool)
    .await?;
    if taken.rows_affected() == 0 {
        anyhow::bail!("object {key} already belongs to another writer; refusing to overwrite it");
    }
    Ok(())
}

/// Makes every object of `owner` live, inside the commit that references them.
pub async fn mark_live(tx: &mut PgConnection, owner: Uuid) -> sqlx::Result<u64> {
    Ok(sqlx::query("UPDATE objects SET state = 'live' WHERE owner = $1 AND state = 'pending'")
        .bind(owner)
        .execute(tx)
        .await?
        .rows_affected())
}

/// Deletes the pending objects of an owner that will not commit (a lost race, a failed
/// attempt, a refused upload). Best effort: what is left is found by [`sweep_orphans`].
pub async fn discard(bus: &Bus, pool: &PgPool, metrics: &Metrics, owner: Uuid) {
    let rows: Vec<(String, String)> =
        match sqlx::query_as("SELECT bucket, key FROM objects WHERE owner = $1 AND state = 'pending'")
            .bind(owner)
            .fetch_all(pool)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not list an attempt's objects; the sweeper will remove them");
                return;
            }
        };
    delete_rows(bus, pool, metrics, rows).await;
}

async fn delete_rows(bus: &Bus, pool: &PgPool, metrics: &Metrics, rows: Vec<(String, String)>) -> u64 {
    let mut n = 0;
    for (bucket, key) in rows {
        if let Err(e) = bus.delete_object(&bucket, &key).await {
            tracing::warn!(error = format!("{e:#}"), "object delete failed; will retry at the next sweep");
            continue;
        }
        if sqlx::query("DELETE FROM objects WHERE bucket = $1 AND key = $2")
            .bind(&bucket)
            .bind(&key)
            .execute(pool)
            .await
            .is_ok()
        {
            n += 1;
        }
    }
    metrics.objects_deleted(n);
    n
}

/// Deletes pending objects older than `grace` (their writer died or lost) and the objects of
/// cases that failed more than `failed_retention` ago (`None` keeps them). Returns how many.
pub async fn sweep_orphans(
    bus: &Bus,
    pool: &PgPool,
    metrics: &Metrics,
    grace: Duration,
    failed_retention: Option<Duration>,
) -> sqlx::Result<u64> {
    let orphans: Vec<(String, String)> = sqlx::query_as(
        "SELECT bucket, key FROM objects WHERE state = 'pending' AND created_at < now() - make_interval(secs => $1)
         LIMIT 500",
    )
    .bind(grace.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let mut n = delete_rows(bus, pool, metrics, orphans).await;
    if let Some(keep) = failed_retention {
        let expired: Vec<(String, String)> = sqlx::query_as(
            "SELECT o.bucket, o.key FROM objects o JOIN cases c ON c.id = o.case_id
             WHERE c.status = 'failed' AND c.updated_at < now() - make_interval(secs => $1) LIMIT 500",
        )
        .bind(keep.as_secs_f64())
        .fetch_all(pool)
        .await?;
        n += delete_rows(bus, pool, metrics, expired).await;
    }
    Ok(n)
}

/// Deletes every object recorded for a case (a replaced failed upload).
pub async fn discard_case(bus: &Bus, pool: &PgPool, metrics: &Metrics, case_id: Uuid) {
    match sqlx::query_as::<_, (String, String)>("SELECT bucket, key FROM objects WHERE case_id = $1")
        .bind(case_id)
        .fetch_all(pool)
        .await
    {
        Ok(rows) => {
            delete_rows(bus, pool, metrics, rows).await;
        }
        Err(e) => tracing::warn!(error = %e, "could not list a replaced case's objects; the sweeper will remove them"),
    }
}
