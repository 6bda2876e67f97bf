//! Model weights as the services see them: the registry row of a version names its weights in
//! the models object-store bucket; load the current model of a role or any version, publish new
//! weights. The bundled model of a role becomes current when nothing is, or when the current
//! model is an older bundled release; a hospital-trained model is never replaced by a bundle.
//! Roles: `complete` (all four sequences; every case when alone) and `incomplete`.

use std::path::Path;

use anyhow::{Context, anyhow};
use gmmas_contracts as contracts;
use gmmas_models::Analyzer;
use gmmas_runtime::bus::Bus;
use sqlx::PgPool;

const WEIGHTS: &str = "model.safetensors";
const CARD: &str = "model.json";

/// Which cases a registered model serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Cases with all four sequences (and every case when no `Incomplete` model is current).
    Complete,
    /// Cases missing at least one sequence.
    Incomplete,
}

impl Role {
    /// The `model_registry.role` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Complete => "complete",
            Role::Incomplete => "incomplete",
        }
    }
}

/// Loads the current model of `role`; registers `default_weights` first when none is current.
/// None when the role has no current model and no bundled weights.
pub async fn load_current(
    bus: &Bus,
    db: &PgPool,
    default_weights: Option<&Path>,
    device: gmmas_models::Device,
    role: Role,
) -> anyhow::Result<Option<Analyzer>> {
    let current: Option<(String, String, String)> = sqlx::query_as(
        "SELECT version, weights_uri, origin FROM model_registry WHERE status = 'current' AND role = $1",
    )
    .bind(role.as_str())
    .fetch_optional(db)
    .await?;
    let (version, uri) = match (current, default_weights) {
        (Some((version, uri, origin)), _) if origin == "trained" => (version, uri),
        (Some((version, uri, _)), None) => (version, uri),
        (Some((version, uri, _)), Some(weights)) => {
            let bundled = bundled_version(weights, device).await?;
            if bundled.as_deref() == Some(version.as_str()) || bundled.is_none() {
                (version, uri)
            } else {
                register_default(bus, db, weights, device, role).await?
            }
        }
        (None, Some(weights)) => register_default(bus, db, weights, device, role).await?,
        (None, None) => return Ok(None),
    };
    load_uri(bus, &version, &uri, device).await.map(Some)
}

/// Loads any registered version (e.g. the one that produced an analysis).
pub async fn load_version(
    bus: &Bus,
    db: &PgPool,
    version: &str,
    device: gmmas_models::Device,
) -> anyhow::Result<Analyzer> {
    let row: Option<(String,)> = sqlx::query_as("SELECT weights_uri FROM model_registry WHERE version = $1")
        .bind(version)
        .fetch_optional(db)
        .await?;
    let (uri,) = row.ok_or_else(|| anyhow!("model {version} is not in the registry"))?;
    load_uri(bus, version, &uri, device).await
}

/// Writes a registered version's weights and card into `dir` and returns the weights path.
pub async fn download_version(bus: &Bus, db: &PgPool, version: &str, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let row: Option<(String,)> = sqlx::query_as("SELECT weights_uri FROM model_registry WHERE version = $1")
        .bind(version)
        .fetch_optional(db)
        .await?;
    let (uri,) = row.ok_or_else(|| anyhow!("model {version} is not in the registry"))?;
    download(bus, version, &uri, dir).await
}

async fn download(bus: &Bus, version: &str, uri: &str, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let prefix = uri
        .strip_prefix("object:")
        .ok_or_else(|| anyhow!("model {version}: unsupported weights_uri {uri:?} (expected object:<key prefix>)"))?;
    std::fs::create_dir_all(dir)?;
    for name in [WEIGHTS, CARD] {
        let bytes = bus.get_key_in(contracts::MODELS_BUCKET, &format!("{prefix}/{name}")).await?;
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(dir.join(WEIGHTS))
}

async fn load_uri(bus: &Bus, version: &str, uri: &str, device: gmmas_models::Device) -> anyhow::Result<Analyzer> {
    let dir = tempfile::tempdir().context("temporary folder for model weights")?;
    let path = download(bus, version, uri, dir.path()).await?;
    let analyzer = tokio::task::spawn_blocking(move || Analyzer::load(&path, device))
        .await?
        .with_context(|| format!("loading registered model {version}"))?;
    if analyzer.version() != version {
        anyhow::bail!("the weights stored for {version} load as {}: refusing a mislabelled model", analyzer.version());
    }
    Ok(analyzer)
}

/// Uploads a model's weights and card (`<weights>.json`) to the models bucket under its
/// version; returns (weights_uri, sha256 of the weights).
pub async fn publish_weights(bus: &Bus, weights: &Path, version: &str) -> anyhow::Result<(String, String)> {
    let prefix = format!("models/{version}");
    let card_path = weights.with_extension("json");
    let weights_bytes = std::fs::read(weights).with_context(|| format!("reading {}", weights.display()))?;
    let card_bytes = std::fs::read(&card_path).with_context(|| format!("reading {}", card_path.display()))?;
    let stored = bus.put_object_in(contracts::MODELS_BUCKET, &format!("{prefix}/{WEIGHTS}"), &weights_bytes).await?;
    bus.put_object_in(contracts::MODELS_BUCKET, &format!("{prefix}/{CARD}"), &card_bytes).await?;
    Ok((format!("object:{prefix}"), stored.sha256))
}

/// The version of the bundled weights, or None (with a warning) when they cannot be read.
async fn bundled_version(weights: &Path, device: gmmas_models::Device) -> anyhow::Result<Option<String>> {
    let path = weights.to_path_buf();
    match tokio::task::spawn_blocking(move || Analyzer::load(&path, device)).await? {
        Ok(a) => Ok(Some(a.version().to_string())),
        Err(e) => {
            tracing::warn!(error = %e, "bundled model unreadable; keeping the registered one");
            Ok(None)
        }
    }
}

/// Uploads the bundled weights and makes them the current model, retiring an older bundled
/// release in the same transaction (first replica wins; the others read its result).
async fn register_default(
    bus: &Bus,
    db: &PgPool,
    weights: &Path,
    device: gmmas_models::Device,
    role: Role,
) -> anyhow::Result<(String, String)> {
    let path = weights.to_path_buf();
    let analyzer = tokio::task::spawn_blocking(move || Analyzer::load(&path, device))
        .await?
        .with_context(|| format!("loading the bundled model {}", weights.display()))?;
    let version = analyzer.version().to_string();
    let (uri, sha256) = publish_weights(bus, weights, &version).await?;
    let card_bytes = std::fs::read(weights.with_extension("json")).unwrap_or_default();
    let config: serde_json::Value = serde_json::from_slice(&card_bytes).unwrap_or(serde_json::Value::Null);
    let name = config.get("name").and_then(|v| v.as_str()).unwrap_or("gmmas").to_string();
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('gmmas.model_registry'))").execute(&mut *tx).await?;
    let current: Option<(String, String)> =
        sqlx::query_as("SELECT version, origin FROM model_registry WHERE status = 'current' AND role = $1")
            .bind(role.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    let replace = match &current {
        None => true,
        Some((v, origin)) => origin == "bundled" && *v != version,
    };
    if replace {
        sqlx::query("UPDATE model_registry SET status = 'retired' WHERE status = 'current' AND role = $1")
            .bind(role.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO model_registry (version, name, weights_uri, sha256, config, status, promoted_at, origin, role)
             VALUES ($1, $2, $3, $4, $5, 'current', now(), 'bundled', $6)
             ON CONFLICT (version) DO UPDATE SET status = 'current', promoted_at = now(), role = $6",
        )
        .bind(&version)
        .bind(&name)
        .bind(&uri)
        .bind(&sha256)
        .bind(config)
        .bind(role.as_str())
        .execute(&mut *tx)
        .await?;
        gmmas_runtime::db::audit(
            &mut tx,
            "infer",
            "model.promoted",
            None,
            None,
            serde_json::json!({
                "version": version,
                "replaced": current.map(|c| c.0),
                "origin": "bundled",
                "role": role.as_str(),
            }),
        )
        .await?;
    }
    tx.commit().await?;
    if replace {
        tracing::info!(model_version = %version, role = role.as_str(), "the bundled model is now current");
    }
    // Another replica may have won the race; whatever is current now is what we use.
    let row: (String, String) =
        sqlx::query_as("SELECT version, weights_uri FROM model_registry WHERE status = 'current' AND role = $1")
            .bind(role.as_str())
            .fetch_one(db)
            .await?;
    Ok(row)
}
