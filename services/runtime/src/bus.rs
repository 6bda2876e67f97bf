//! The NATS side of a service: the JetStream stream (with its retention), object-store buckets,
//! publishing with a `Nats-Msg-Id`, hash-checked objects with typed errors, durable consumers.

use std::time::Duration;

use anyhow::{Context, anyhow};
use async_nats::jetstream::{self, consumer::pull, object_store, stream};
use gmmas_contracts as contracts;
use tokio::io::AsyncReadExt;

use crate::CommonConfig;

/// Why an object could not be read. `Missing` and `Corrupt` are facts about the data (retrying
/// will not help); `Bus` is a problem reaching NATS (retrying may).
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("object {key} is missing from bucket {bucket}")]
    Missing { bucket: String, key: String },
    #[error("object {key} is corrupt: sha256 {got}, expected {expected}")]
    Corrupt { key: String, got: String, expected: String },
    #[error(transparent)]
    Bus(#[from] anyhow::Error),
}

/// A connection to NATS with its JetStream context and the volumes bucket.
#[derive(Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub volumes: object_store::ObjectStore,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").finish_non_exhaustive()
    }
}

impl Bus {
    /// Connects with default retention settings (tools and tests).
    pub async fn connect(url: &str) -> anyhow::Result<Bus> {
        Self::connect_with(&CommonConfig { nats_url: url.into(), ..CommonConfig::default() }).await
    }

    /// Connects and makes sure the stream (with the configured retention) and buckets exist.
    pub async fn connect_with(cfg: &CommonConfig) -> anyhow::Result<Bus> {
        let client = connect_client(cfg, Duration::from_secs(30)).await?;
        let js = jetstream::new(client.clone());
        let want = stream::Config {
            name: contracts::STREAM.into(),
            subjects: vec![contracts::STREAM_SUBJECTS.into()],
            duplicate_window: Duration::from_secs(600),
            max_age: Duration::from_secs(cfg.stream_max_age_days * 86_400),
            ..Default::default()
        };
        let mut existing = js
            .get_or_create_stream(want.clone())
            .await
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("creating JetStream stream {}", contracts::STREAM))?;
        let info = existing.info().await.map_err(|e| anyhow!("{e}"))?;
        if info.config.max_age != want.max_age {
            tracing::info!(max_age_days = cfg.stream_max_age_days, "updating the stream's retention");
            js.update_stream(want).await.map_err(|e| anyhow!("{e}")).context("updating the stream's retention")?;
        }
        let volumes = ensure_bucket(&js, contracts::VOLUMES_BUCKET).await?;
        Ok(Bus { client, js, volumes })
    }

    /// Publishes an encoded message with its de-duplication id and waits for the stream's ack.
    pub async fn publish(&self, subject: String, msg_id: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(contracts::MSG_ID_HEADER, msg_id);
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("publishing to {subject}"))?;
        ack.await.map_err(|e| anyhow!("{e}")).with_context(|| format!("waiting for the ack of {subject}"))?;
        Ok(())
    }

    /// Stores bytes under `key` in the volumes bucket and returns their reference.
    pub async fn put_object(&self, key: &str, bytes: &[u8]) -> anyhow::Result<contracts::ObjectRef> {
        self.put_object_in(contracts::VOLUMES_BUCKET, key, bytes).await
    }

    /// Stores bytes under `key` in `bucket` (created when missing) and returns their reference.
    pub async fn put_object_in(&self, bucket: &str, key: &str, bytes: &[u8]) -> anyhow::Result<contracts::ObjectRef> {
        let sha256 = sha256_hex(bytes);
        let mut reader = bytes;
        let store = self.store(bucket).await?;
        store
            .put(key, &mut reader)
            .await
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("storing object {key}"))?;
        Ok(contracts::ObjectRef { bucket: bucket.into(), key: key.into(), sha256, size: bytes.len() as u64 })
    }

    /// Stores what `reader` yields under `key` in `bucket`, chunk by chunk; `sha256` and `size`
    /// are those the caller took of the same bytes, and the store's count must agree.
    pub async fn put_object_from<R: tokio::io::AsyncRead + Unpin>(
        &self,
        bucket: &str,
        key: &str,
        reader: &mut R,
        sha256: &str,
        size: u64,
    ) -> anyhow::Result<contracts::ObjectRef> {
        let store = self.store(bucket).await?;
        let info = store
            .put(key, reader)
            .await
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("storing object {key}"))?;
        if info.size as u64 != size {
            anyhow::bail!("object {key}: stored {} bytes, expected {size}", info.size);
        }
        Ok(contracts::ObjectRef { bucket: bucket.into(), key: key.into(), sha256: sha256.into(), size })
    }

    /// Reads an object back and checks it against the hash it was stored with.
    pub async fn get_object(&self, obj: &contracts::ObjectRef) -> Result<Vec<u8>, ObjectError> {
        let store = self.store(&obj.bucket).await?;
        let mut object = match store.get(&obj.key).await {
            Ok(o) => o,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                return Err(ObjectError::Missing { bucket: obj.bucket.clone(), key: obj.key.clone() });
            }
            Err(e) => return Err(ObjectError::Bus(anyhow!("{e}").context(format!("fetching object {}", obj.key)))),
        };
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| ObjectError::Bus(anyhow!("{e}").context(format!("reading object {}", obj.key))))?;
        let got = sha256_hex(&bytes);
        if got != obj.sha256 {
            return Err(ObjectError::Corrupt { key: obj.key.clone(), got, expected: obj.sha256.clone() });
        }
        Ok(bytes)
    }

    /// Deletes an object; a missing one counts as deleted.
    pub async fn delete_object(&self, bucket: &str, key: &str) -> anyhow::Result<()> {
        let store = self.store(bucket).await?;
        match store.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow!("{e}").context(format!("deleting object {key}"))),
        }
    }

    /// Names of every object in a bucket (for audits of what the store holds).
    pub async fn list_keys(&self, bucket: &str) -> anyhow::Result<Vec<String>> {
        use futures::StreamExt;
        let store = self.store(bucket).await?;
        let mut list = store.list().await.map_err(|e| anyhow!("{e}"))?;
        let mut keys = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| anyhow!("{e}"))?;
            if !info.deleted {
                keys.push(info.name);
            }
        }
        Ok(keys)
    }

    /// The durable pull consumer `durable` on the stream, created when missing and brought to
    /// the configured settings when it exists with others. Redelivery is unlimited: the stage
    /// worker, not the bus, decides when a case has had enough attempts.
    pub async fn consumer(
        &self,
        durable: &str,
        filter_subject: &str,
        ack_wait: Duration,
        max_ack_pending: i64,
    ) -> anyhow::Result<jetstream::consumer::PullConsumer> {
        let stream = self.js.get_stream(contracts::STREAM).await.map_err(|e| anyhow!("{e}"))?;
        let config = pull::Config {
            durable_name: Some(durable.into()),
            filter_subject: filter_subject.into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver: -1,
            max_ack_pending,
            ..Default::default()
        };
        match stream.create_consumer(config.clone()).await {
            Ok(c) => Ok(c),
            Err(e) => {
                // A server that cannot change a setting in place: start the durable afresh (its
                // unacknowledged messages are redelivered from the stream).
                tracing::warn!(consumer = durable, error = %e, "consumer settings could not be updated; recreating it");
                stream.delete_consumer(durable).await.map_err(|e| anyhow!("{e}"))?;
                stream
                    .create_consumer(config)
                    .await
                    .map_err(|e| anyhow!("{e}"))
                    .with_context(|| format!("creating consumer {durable}"))
            }
        }
    }

    /// Reads an object of the volumes bucket by key, without a hash check.
    pub async fn get_key(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        self.get_key_in(contracts::VOLUMES_BUCKET, key).await
    }

    /// Reads an object by bucket and key, without a hash check.
    pub async fn get_key_in(&self, bucket: &str, key: &str) -> anyhow::Result<Vec<u8>> {
        let store = self.store(bucket).await?;
        let mut object =
            store.get(key).await.map_err(|e| anyhow!("{e}")).with_context(|| format!("fetching object {key}"))?;
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await.with_context(|| format!("reading object {key}"))?;
        Ok(bytes)
    }

    async fn store(&self, bucket: &str) -> anyhow::Result<object_store::ObjectStore> {
        if bucket == contracts::VOLUMES_BUCKET {
            return Ok(self.volumes.clone());
        }
        ensure_bucket(&self.js, bucket).await
    }

    /// True while the client is connected.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// Connects, retrying while the server is not reachable for up to `wait`; refused credentials
/// and TLS failures end at once with an error that says so.
pub async fn connect_client(cfg: &CommonConfig, wait: Duration) -> anyhow::Result<async_nats::Client> {
    use async_nats::ConnectErrorKind as K;
    let url = cfg.nats_url.as_str();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match connect_options(cfg)?.connect(url).await {
            Ok(client) => return Ok(client),
            Err(e) if matches!(e.kind(), K::AuthorizationViolation | K::Authentication) => {
                let who =
                    if cfg.nats_user.is_empty() { "no user".to_string() } else { format!("user {}", cfg.nats_user) };
                anyhow::bail!(
                    "NATS at {url} refused the credentials ({who}): {e}; check nats_user and nats_password_file"
                )
            }
            // rustls' verdicts arrive as I/O errors; a certificate problem does not heal by waiting.
            Err(e) if e.kind() == K::Tls || e.to_string().contains("certificate") => {
                anyhow::bail!("TLS with NATS at {url} failed: {e}; check nats_tls_ca_file and the server certificate")
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "NATS not reachable yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(anyhow!("{e}")).with_context(|| format!("connecting to NATS at {url}")),
        }
    }
}

/// Connection options from the settings: credentials, the service's own inbox prefix, TLS.
pub fn connect_options(cfg: &CommonConfig) -> anyhow::Result<async_nats::ConnectOptions> {
    let mut opts = async_nats::ConnectOptions::new();
    if !cfg.nats_user.is_empty() {
        let password = if cfg.nats_password_file.is_empty() {
            String::new()
        } else {
            std::fs::read_to_string(&cfg.nats_password_file)
                .with_context(|| format!("reading nats_password_file {}", cfg.nats_password_file))?
                .trim_end()
                .to_string()
        };
        opts = async_nats::ConnectOptions::with_user_and_password(cfg.nats_user.clone(), password)
            .custom_inbox_prefix(crate::bus_auth::inbox_prefix(&cfg.nats_user));
    }
    opts = opts.name("gmmas").connection_timeout(Duration::from_secs(5));
    if !cfg.nats_tls_ca_file.is_empty() {
        opts = opts.add_root_certificates(cfg.nats_tls_ca_file.clone().into()).require_tls(true);
    }
    match (cfg.nats_tls_cert_file.is_empty(), cfg.nats_tls_key_file.is_empty()) {
        (false, false) => {
            opts =
                opts.add_client_certificate(cfg.nats_tls_cert_file.clone().into(), cfg.nats_tls_key_file.clone().into())
        }
        (true, true) => {}
        _ => anyhow::bail!("nats_tls_cert_file and nats_tls_key_file must be set together"),
    }
    if cfg.nats_tls_required {
        opts = opts.require_tls(true);
    }
    Ok(opts)
}

async fn ensure_bucket(js: &jetstream::Context, name: &str) -> anyhow::Result<object_store::ObjectStore> {
    match js.get_object_store(name).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_object_store(object_store::Config { bucket: name.into(), ..Default::default() })
            .await
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("creating object store bucket {name}")),
    }
}

pub use gmmas_contracts::sha256_hex;
