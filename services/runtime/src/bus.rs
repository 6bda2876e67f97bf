//! The NATS side of a service: JetStream stream and object-store buckets, publishing with a
//! `Nats-Msg-Id`, content-addressed objects, and the durable pull-consumer loop.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use async_nats::jetstream::{self, AckKind, consumer::pull, object_store, stream};
use futures::StreamExt;
use gmmas_contracts as contracts;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::CommonConfig;
use crate::http::Metrics;
use crate::shutdown::Shutdown;

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
    /// Connects and makes sure the stream and buckets exist (idempotent).
    pub async fn connect(url: &str) -> anyhow::Result<Bus> {
        let client = async_nats::ConnectOptions::new()
            .name("gmmas")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(stream::Config {
            name: contracts::STREAM.into(),
            subjects: vec![contracts::STREAM_SUBJECTS.into()],
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("creating JetStream stream {}", contracts::STREAM))?;
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
    pub async fn get_object(&self, obj: &contracts::ObjectRef) -> anyhow::Result<Vec<u8>> {
        let bytes = self.get_key_in(&obj.bucket, &obj.key).await?;
        let got = sha256_hex(&bytes);
        if got != obj.sha256 {
            anyhow::bail!("object {} is corrupt: sha256 {got}, expected {}", obj.key, obj.sha256);
        }
        Ok(bytes)
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

/// What a handler decided about one message.
#[derive(Debug)]
pub enum Outcome {
    /// Done (or already done before): ack.
    Done,
    /// The input is bad; the case was marked failed. Ack and never redeliver.
    Rejected,
    /// A transient problem (database, bus): nack so that it is redelivered later.
    Retry(anyhow::Error),
}

/// One delivery handed to a handler.
#[derive(Debug)]
pub struct Delivery {
    pub subject: String,
    pub payload: bytes::Bytes,
    /// 1 for the first delivery, 2 after one redelivery, ...
    pub attempt: i64,
}

/// A durable pull consumer on the GMMAS stream.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub durable: &'static str,
    pub filter_subject: String,
    pub stage: &'static str,
}

/// Runs `handler` on every message of the consumer until shutdown. At most `workers` messages
/// are held at once; while one is being handled its ack deadline is extended; on shutdown no
/// new message is taken and those in hand are finished.
pub async fn run_consumer<H, F>(
    bus: &Bus,
    cfg: &CommonConfig,
    spec: ConsumerSpec,
    metrics: Metrics,
    shutdown: Shutdown,
    handler: H,
) -> anyhow::Result<()>
where
    H: Fn(Delivery) -> F + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    let stream = bus.js.get_stream(contracts::STREAM).await.map_err(|e| anyhow!("{e}"))?;
    let ack_wait = Duration::from_secs(cfg.ack_wait_s.max(1));
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            spec.durable,
            pull::Config {
                durable_name: Some(spec.durable.into()),
                filter_subject: spec.filter_subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait,
                max_deliver: cfg.max_deliver,
                max_ack_pending: (cfg.workers as i64).max(1) * 4,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("creating consumer {}", spec.durable))?;
    tracing::info!(consumer = spec.durable, filter = %spec.filter_subject, "consuming");

    let handler = Arc::new(handler);
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.workers.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.wait() => break,
            p = permits.clone().acquire_owned() => p?,
        };
        let mut batch = match consumer.fetch().max_messages(1).expires(Duration::from_secs(2)).messages().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "fetch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let next = tokio::select! {
            _ = shutdown.wait() => break,
            m = batch.next() => m,
        };
        let msg = match next {
            None => continue,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "receive failed");
                continue;
            }
            Some(Ok(m)) => m,
        };
        let handler = handler.clone();
        let metrics = metrics.clone();
        let stage = spec.stage;
        tasks.spawn(async move {
            let _permit = permit;
            let attempt = msg.info().map(|i| i.delivered).unwrap_or(1);
            let delivery = Delivery { subject: msg.subject.to_string(), payload: msg.payload.clone(), attempt };
            let started = Instant::now();
            let work = handler(delivery);
            tokio::pin!(work);
            // Keep the message ours while we work: JetStream redelivers after ack_wait otherwise.
            let mut tick = tokio::time::interval(ack_wait / 3);
            tick.tick().await;
            let outcome = loop {
                tokio::select! {
                    o = &mut work => break o,
                    _ = tick.tick() => { let _ = msg.ack_with(AckKind::Progress).await; }
                }
            };
            let elapsed = started.elapsed().as_secs_f64();
            let (label, ack) = match &outcome {
                Outcome::Done => ("done", AckKind::Ack),
                Outcome::Rejected => ("rejected", AckKind::Term),
                Outcome::Retry(e) => {
                    tracing::warn!(stage, attempt, error = format!("{e:#}"), "will retry");
                    ("retry", AckKind::Nak(Some(Duration::from_secs(2))))
                }
            };
            metrics.observe_message(stage, label, elapsed);
            if let Err(e) = msg.ack_with(ack).await {
                tracing::warn!(stage, error = %e, "ack failed; the message will be redelivered");
            }
        });
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!(error = %e, "handler task panicked");
            }
        }
    }
    tracing::info!(consumer = spec.durable, in_flight = tasks.len(), "draining in-flight messages");
    while tasks.join_next().await.is_some() {}
    Ok(())
}
