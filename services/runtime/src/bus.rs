//! The NATS side of a service: the JetStream stream (with its retention), object-store buckets,
//! publishing with a `Nats-Msg-Id`, hash-checked objects with typed errors, durable consumers.

use std::time::Duration;

use anyhow::{Context, anyhow};
use async_nats::jetstream::{self, consumer::pull, object_store, stream};
use gmmas_contracts as contracts;
use sha2::{Digest, Sha256};
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
        let url = cfg.nats_url.as_str();
        let client = async_nats::ConnectOptions::new()
            .name("gmmas")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
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

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
