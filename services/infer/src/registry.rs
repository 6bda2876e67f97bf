//! The model registry as infer sees it: the `current` row of `model_registry` names the weights,
//! kept in the models object-store bucket; an empty registry is seeded with the bundled model.

use std::path::Path;

use anyhow::{Context, anyhow};
use gmmas_contracts as contracts;
use gmmas_models::Analyzer;
use gmmas_runtime::bus::Bus;
use sqlx::PgPool;

const WEIGHTS: &str = "model.safetensors";
const CARD: &str = "model.json";

/// Loads the current model; registers `default_weights` first when no model is current.
pub async fn load_current(
    bus: &Bus,
    db: &PgPool,
    default_weights: &Path,
    device: gmmas_models::Device,
) -> anyhow::Result<Analyzer> {
    let current: Option<(String, String)> =
        sqlx::query_as("SELECT version, weights_uri FROM model_registry WHERE status = 'current'")
            .fetch_optional(db)
            .await?;
    let (version, uri) = match current {
        Some(row) => row,
        None => register_default(bus, db, default_weights, device).await?,
    };
    let prefix = uri
        .strip_prefix("object:")
        .ok_or_else(|| anyhow!("model {version}: unsupported weights_uri {uri:?} (expected object:<key prefix>)"))?;
    let dir = tempfile::tempdir().context("temporary folder for model weights")?;
    for name in [WEIGHTS, CARD] {
        let bytes = bus.get_key_in(contracts::MODELS_BUCKET, &format!("{prefix}/{name}")).await?;
        std::fs::write(dir.path().join(name), bytes)?;
    }
    let path = dir.path().join(WEIGHTS);
    let analyzer = tokio::task::spawn_blocking(move || Analyzer::load(&path, device))
        .await?
        .with_context(|| format!("loading registered model {version}"))?;
    Ok(analyzer)
}

/// Uploads the bundled weights and records them as the current model (first one wins).
async fn register_default(
    bus: &Bus,
    db: &PgPool,
    weights: &Path,
    device: gmmas_models::Device,
) -> anyhow::Result<(String, String)> {
    let path = weights.to_path_buf();
    let analyzer = tokio::task::spawn_blocking(move || Analyzer::load(&path, device))
        .await?
        .with_context(|| format!("loading the bundled model {}", weights.display()))?;
    let version = analyzer.version().to_string();
    let prefix = format!("models/{version}");
    let card_path = weights.with_extension("json");
    let weights_bytes = std::fs::read(weights).with_context(|| format!("reading {}", weights.display()))?;
    let card_bytes = std::fs::read(&card_path).with_context(|| format!("reading {}", card_path.display()))?;
    let stored = bus.put_object_in(contracts::MODELS_BUCKET, &format!("{prefix}/{WEIGHTS}"), &weights_bytes).await?;
    bus.put_object_in(contracts::MODELS_BUCKET, &format!("{prefix}/{CARD}"), &card_bytes).await?;
    let config: serde_json::Value = serde_json::from_slice(&card_bytes).unwrap_or(serde_json::Value::Null);
    let name = config.get("name").and_then(|v| v.as_str()).unwrap_or("gmmas").to_string();
    sqlx::query(
        "INSERT INTO model_registry (version, name, weights_uri, sha256, config, status, promoted_at)
         VALUES ($1, $2, $3, $4, $5, 'current', now()) ON CONFLICT DO NOTHING",
    )
    .bind(&version)
    .bind(&name)
    .bind(format!("object:{prefix}"))
    .bind(&stored.sha256)
    .bind(config)
    .execute(db)
    .await?;
    tracing::info!(model_version = %version, "registered the bundled model as current");
    // Another replica may have won the race; whatever is current now is what we use.
    let row: (String, String) =
        sqlx::query_as("SELECT version, weights_uri FROM model_registry WHERE status = 'current'")
            .fetch_one(db)
            .await?;
    Ok(row)
}
