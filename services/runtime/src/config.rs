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
    /// NATS user of this service (empty: connect without credentials). With one, the server's
    /// permissions for that user apply (`gmmas nats-config` writes them) and the relay publishes
    /// only the events this service may publish.
    pub nats_user: String,
    /// File holding the NATS password of `nats_user` (a mounted secret).
    pub nats_password_file: String,
    /// CA certificate (PEM) the NATS server's certificate must chain to; implies TLS.
    pub nats_tls_ca_file: String,
    /// Client certificate and key (PEM) for servers that verify clients.
    pub nats_tls_cert_file: String,
    pub nats_tls_key_file: String,
    /// Refuse to talk to NATS without TLS.
    pub nats_tls_required: bool,
    /// PostgreSQL connection URL.
    pub database_url: String,
    /// Apply database migrations at start. Off where the service runs as the least-privilege
    /// service role: then `gmmas migrate` applies them and the service only checks the schema.
    pub migrate_on_start: bool,
    /// Address of this service's HTTP listener (health, metrics and, for api/ingest, the API).
    pub http_addr: String,
    /// `json` (default) or `pretty` logs.
    pub log_format: String,
    /// Seconds JetStream waits for an ack before redelivering a message.
    pub ack_wait_s: u64,
    /// Attempts at one stage of a case before the case is marked failed (the bus itself
    /// redelivers without limit, so a message is never dropped silently).
    pub max_deliver: i64,
    /// Messages handled at the same time by this process.
    pub workers: usize,
    /// First retry delay after a transient failure, in seconds; doubles per attempt.
    pub retry_backoff_s: f64,
    /// Longest retry delay, in seconds.
    pub retry_backoff_max_s: f64,
    /// Seconds between sweeps for stale cases, orphan objects and old outbox rows.
    pub sweep_interval_s: u64,
    /// A case with no progress (and no live attempt) for this long is re-driven.
    pub stale_after_s: u64,
    /// Re-drives of a stale case before it is marked failed.
    pub max_redrives: i32,
    /// Objects written by an attempt that never committed are deleted after this many seconds.
    pub orphan_grace_s: u64,
    /// Objects of failed cases are deleted after this many days (0 = kept).
    pub failed_retention_days: u64,
    /// Published outbox rows are deleted after this many days.
    pub outbox_retention_days: u64,
    /// Events older than this many days are removed from the stream (0 = kept).
    pub stream_max_age_days: u64,
    /// Seconds a client has to send its request headers (slowloris protection).
    pub header_timeout_s: f64,
    /// Seconds a request (body included) may take before it is answered 408.
    pub request_timeout_s: f64,
}

impl Default for CommonConfig {
    fn default() -> Self {
        CommonConfig {
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_user: String::new(),
            nats_password_file: String::new(),
            nats_tls_ca_file: String::new(),
            nats_tls_cert_file: String::new(),
            nats_tls_key_file: String::new(),
            nats_tls_required: false,
            database_url: "postgres://postgres@127.0.0.1:5432/gmmas".into(),
            migrate_on_start: true,
            http_addr: "127.0.0.1:0".into(),
            log_format: "json".into(),
            ack_wait_s: 60,
            max_deliver: 6,
            workers: 1,
            retry_backoff_s: 2.0,
            retry_backoff_max_s: 60.0,
            sweep_interval_s: 30,
            stale_after_s: 600,
            max_redrives: 2,
            orphan_grace_s: 3600,
            failed_retention_days: 30,
            outbox_retention_days: 7,
            stream_max_age_days: 30,
            header_timeout_s: 10.0,
            request_timeout_s: 600.0,
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
    // Before any logger exists: a misspelt variable would otherwise be ignored silently.
    if let Ok(Value::Object(keys)) = serde_json::to_value(T::default()) {
        for w in misspelt(&env, keys.keys().map(String::as_str)) {
            eprintln!("warning: {w}");
        }
    }
    load_from(text.as_deref(), &env).with_context(|| match file {
        Some(f) => format!("configuration (file {f} and GMMAS_* variables)"),
        None => "configuration (GMMAS_* variables)".to_string(),
    })
}

/// `GMMAS_*` variables that are no setting of this service but one or two letters away from
/// one (another service's settings, further away, are left alone), each with the setting it
/// probably meant.
pub fn misspelt<'a>(env: &[(String, String)], keys: impl Iterator<Item = &'a str>) -> Vec<String> {
    let keys: Vec<&str> = keys.collect();
    let mut out = Vec::new();
    for (name, _) in env {
        let Some(key) = name.strip_prefix("GMMAS_") else { continue };
        let key = key.to_ascii_lowercase();
        if keys.contains(&key.as_str()) {
            continue;
        }
        if let Some(best) = keys.iter().filter(|k| edit_distance(&key, k) <= 2).min_by_key(|k| edit_distance(&key, k)) {
            out.push(format!(
                "{name} is not a setting of this service (ignored); did you mean GMMAS_{}?",
                best.to_ascii_uppercase()
            ));
        }
    }
    out
}

/// Levenshtein distance of two ASCII strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
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

impl CommonConfig {
    /// The time limits of this service's HTTP listener.
    pub fn http_limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            header_timeout: std::time::Duration::from_secs_f64(self.header_timeout_s.max(0.1)),
            request_timeout: std::time::Duration::from_secs_f64(self.request_timeout_s.max(0.1)),
            ..Default::default()
        }
    }

    /// Delay before the retry that follows failed attempt `attempt` (1-based): exponential,
    /// capped at `retry_backoff_max_s`.
    pub fn backoff(&self, attempt: i32) -> std::time::Duration {
        let exp = (attempt.max(1) - 1).min(30);
        let s = (self.retry_backoff_s.max(0.01) * 2f64.powi(exp)).min(self.retry_backoff_max_s.max(0.01));
        std::time::Duration::from_secs_f64(s)
    }
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
    fn backoff_doubles_up_to_the_cap() {
        let c = CommonConfig { retry_backoff_s: 2.0, retry_backoff_max_s: 20.0, ..Default::default() };
        let secs: Vec<f64> = (1..=6).map(|a| c.backoff(a).as_secs_f64()).collect();
        assert_eq!(secs, vec![2.0, 4.0, 8.0, 16.0, 20.0, 20.0]);
        assert_eq!(c.backoff(0).as_secs_f64(), 2.0);
    }

    #[test]
    fn misspelt_variables_are_named_with_the_setting_they_meant() {
        let keys = ["mc_passes", "nats_url", "database_url"];
        let w = misspelt(
            &env(&[
                ("GMMAS_MC_PASES", "8"),
                ("GMMAS_NATS_URL", "x"),
                ("GMMAS_DATABSE_URL", "y"),
                ("GMMAS_MODEL_PATH", "z"),
                ("OTHER", "1"),
            ]),
            keys.into_iter(),
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("GMMAS_MC_PASES") && w[0].contains("GMMAS_MC_PASSES"), "{w:?}");
        assert!(w[1].contains("GMMAS_DATABSE_URL") && w[1].contains("GMMAS_DATABASE_URL"), "{w:?}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn bad_values_are_named() {
        let err = load_from::<Svc>(None, &env(&[("GMMAS_WORKERS", "many")])).unwrap_err();
        assert!(format!("{err:#}").contains("GMMAS_WORKERS"), "{err:#}");
        let err = load_from::<Svc>(Some("nats_ulr = 'x'"), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("nats_ulr"), "{err:#}");
    }
}
