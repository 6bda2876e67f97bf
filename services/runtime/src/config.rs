//! Service configuration: defaults, then a TOML file named by `GMMAS_CONFIG`, then `GMMAS_*`
//! environment variables (one per top-level field, e.g. `GMMAS_NATS_URL`).

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

/// Settings every service has. Services embed it with `#[serde(flatten)]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CommonConfig {
    /// NATS server(s), comma separated.
    pub nats_url: String,
    /// PostgreSQL connection URL.
    pub database_url: String,
    /// Address of this service's HTTP listener (health, metrics and, for api/ingest, the API).
    pub http_addr: String,
    /// `json` (default) or `pretty` logs.
    pub log_format: String,
    /// Seconds JetStream waits for an ack before redelivering a message.
    pub ack_wait_s: u64,
    /// Deliveries of one message before it is given up on.
    pub max_deliver: i64,
    /// Messages handled at the same time by this process.
    pub workers: usize,
}

impl Default for CommonConfig {
    fn default() -> Self {
        CommonConfig {
            nats_url: "nats://127.0.0.1:4222".into(),
            database_url: "postgres://postgres@127.0.0.1:5432/gmmas".into(),
            http_addr: "127.0.0.1:0".into(),
            log_format: "json".into(),
            ack_wait_s: 60,
            max_deliver: 5,
            workers: 1,
        }
    }
}

/// Loads `T` from its defaults, the file in `GMMAS_CONFIG` (if set) and `GMMAS_*` variables.
pub fn load_config<T: Serialize + DeserializeOwned + Default>() -> anyhow::Result<T> {
    let file = std::env::var("GMMAS_CONFIG").ok();
    let text = match &file {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("reading config file {path}"))?),
        None => None,
    };
    let env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("GMMAS_")).collect();
    load_from(text.as_deref(), &env).with_context(|| match file {
        Some(f) => format!("configuration (file {f} and GMMAS_* variables)"),
        None => "configuration (GMMAS_* variables)".to_string(),
    })
}

/// The merge behind [`load_config`], separated for tests.
pub fn load_from<T: Serialize + DeserializeOwned + Default>(
    toml_text: Option<&str>,
    env: &[(String, String)],
) -> anyhow::Result<T> {
    let mut merged = serde_json::to_value(T::default())?;
    let Value::Object(map) = &mut merged else { bail!("config type must be a struct") };
    if let Some(text) = toml_text {
        let file: toml::Table = toml::from_str(text).context("parsing TOML")?;
        for (key, value) in file {
            if !map.contains_key(&key) {
                bail!("unknown setting `{key}` in the config file");
            }
            map.insert(key, serde_json::to_value(value)?);
        }
    }
    for (name, raw) in env {
        let Some(key) = name.strip_prefix("GMMAS_") else { continue };
        let key = key.to_ascii_lowercase();
        let Some(current) = map.get(&key) else { continue };
        let value = match current {
            Value::Number(_) | Value::Bool(_) => {
                serde_json::from_str(raw).with_context(|| format!("{name}={raw:?}: expected a {}", kind(current)))?
            }
            Value::Array(_) => {
                Value::Array(raw.split(',').filter(|s| !s.is_empty()).map(|s| Value::String(s.trim().into())).collect())
            }
            _ => Value::String(raw.clone()),
        };
        map.insert(key, value);
    }
    serde_json::from_value(merged).context("invalid configuration value")
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean (true/false)",
        _ => "number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, Default)]
    #[serde(default)]
    struct Svc {
        #[serde(flatten)]
        common: CommonConfig,
        mc_passes: usize,
        models_dir: String,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn file_then_environment() {
        let c: Svc = load_from(
            Some("nats_url = 'nats://a:1'\nmc_passes = 3\nworkers = 2"),
            &env(&[("GMMAS_MC_PASSES", "8"), ("GMMAS_DATABASE_URL", "postgres://x/y"), ("OTHER", "1")]),
        )
        .unwrap();
        assert_eq!(c.common.nats_url, "nats://a:1");
        assert_eq!(c.common.workers, 2);
        assert_eq!(c.mc_passes, 8);
        assert_eq!(c.common.database_url, "postgres://x/y");
        assert_eq!(c.models_dir, "");
    }

    #[test]
    fn bad_values_are_named() {
        let err = load_from::<Svc>(None, &env(&[("GMMAS_WORKERS", "many")])).unwrap_err();
        assert!(format!("{err:#}").contains("GMMAS_WORKERS"), "{err:#}");
        let err = load_from::<Svc>(Some("nats_ulr = 'x'"), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("nats_ulr"), "{err:#}");
    }
}
