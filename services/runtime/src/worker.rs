//! The stage worker: one driver for every consuming service. It owns decoding, the checks of a
//! message against its case's database row, idempotency, attempts and backoff, per-attempt
//! object keys, the conditional commit with the outbox, failure of a case, spans and metrics.
//! A service supplies only its [`StageWorker::work`] (and the rows it adds at commit).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use futures::StreamExt;
use gmmas_contracts::{self as contracts, CaseMessage, CaseStatus, Event, ObjectRef, Stage, TenantId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;
use uuid::Uuid;

use crate::bus::{Bus, ObjectError};
use crate::db::{self, StageState};
use crate::metrics::Metrics;
use crate::outbox::{self, RelayHandle};
use crate::{CommonConfig, Shutdown, objects};

/// Why an attempt did not produce its output.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The input is unusable (bad data, missing or corrupt object): the case is failed now
    /// with this reason, which a person can read.
    #[error("{0}")]
    Permanent(String),
    /// Something that may work later (database, bus, memory, a deadline): retried with backoff
    /// until the attempts run out.
    #[error(transparent)]
    Transient(anyhow::Error),
}

impl StageError {
    pub fn transient(e: impl Into<anyhow::Error>) -> Self {
        StageError::Transient(e.into())
    }
}

impl From<ObjectError> for StageError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::Bus(e) => StageError::Transient(e),
            data => StageError::Permanent(data.to_string()),
        }
    }
}

impl From<sqlx::Error> for StageError {
    fn from(e: sqlx::Error) -> Self {
        StageError::Transient(anyhow::Error::new(e).context("database"))
    }
}

impl From<contracts::ContractError> for StageError {
    fn from(e: contracts::ContractError) -> Self {
        StageError::Transient(anyhow::Error::new(e))
    }
}

/// What a stage consumes and produces, and where it sits in a case's life.
#[derive(Debug, Clone, Copy)]
pub struct StageSpec {
    pub stage: Stage,
    /// The stage whose recorded output every input message must equal.
    pub upstream: Stage,
    /// The durable consumer's name.
    pub durable: &'static str,
    pub input: Event,
    pub output: Event,
    /// Case status while this stage works on it (None: unchanged).
    pub working: Option<CaseStatus>,
    /// Case status once this stage has committed (None: unchanged).
    pub after: Option<CaseStatus>,
    /// A stage off the case's critical path (curate): it also works on finished cases, and
    /// its failure is recorded on the stage only, never on the case a clinician reads.
    pub side_branch: bool,
}

/// A stage that consumes events: every stage but ingest, which takes uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consuming {
    Preprocess,
    Infer,
    Curate,
    Report,
}

impl StageSpec {
    /// The pipeline's wiring of a consuming stage: what it reads and writes, whose output its
    /// input must equal, and the case statuses around it.
    pub fn of(stage: Consuming) -> StageSpec {
        use CaseStatus::{Analyzing, Done, Preprocessing};
        use contracts::consumers;
        let (stage, upstream, durable, output) = match stage {
            Consuming::Preprocess => (Stage::Preprocess, Stage::Ingest, consumers::PREPROCESS, Event::ScanPreprocessed),
            Consuming::Infer => (Stage::Infer, Stage::Preprocess, consumers::INFER, Event::ScanAnalyzed),
            Consuming::Curate => (Stage::Curate, Stage::Infer, consumers::CURATE, Event::DatasetUpdated),
            Consuming::Report => (Stage::Report, Stage::Infer, consumers::REPORT, Event::ReportReady),
        };
        // A stage reads what its upstream writes.
        let input = match upstream {
            Stage::Ingest => Event::ScanIngested,
            Stage::Preprocess => Event::ScanPreprocessed,
            Stage::Infer | Stage::Curate | Stage::Report => Event::ScanAnalyzed,
        };
        // The statuses a clinician reads; the side branches leave them alone.
        let (working, after) = match stage {
            Stage::Preprocess => (Some(Preprocessing), Some(Analyzing)),
            Stage::Infer => (Some(Analyzing), Some(Done)),
            _ => (None, None),
        };
        StageSpec { stage, upstream, durable, input, output, working, after, side_branch: working.is_none() }
    }
}

/// A consuming service's part: turn one input into one output.
pub trait StageWorker: Send + Sync + 'static {
    type Input: DeserializeOwned + CaseMessage + Send + Sync + 'static;
    type Output: Serialize + Send + Sync + 'static;

    /// Which stage of the pipeline this worker is; its wiring is [`StageSpec::of`] that stage.
    const STAGE: Consuming;

    /// Does the work of one attempt. Objects must be written through [`Attempt::put_object`].
    fn work(
        &self,
        attempt: &Attempt,
        input: &Self::Input,
    ) -> impl Future<Output = Result<Self::Output, StageError>> + Send;

    /// The message published (and recorded as the stage's output) for an output (default: the
    /// output itself).
    fn encode(&self, output: &Self::Output) -> Result<Vec<u8>, contracts::ContractError> {
        contracts::encode(output)
    }

    /// Writes the stage's own rows inside the commit transaction (default: none).
    fn commit(
        &self,
        _tx: &mut PgConnection,
        _input: &Self::Input,
        _output: &Self::Output,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        async { Ok(()) }
    }
}

/// One attempt at a stage of a case: its id, number, and the object store under its own keys.
#[derive(Debug)]
pub struct Attempt {
    pub id: Uuid,
    pub number: i32,
    pub case_id: Uuid,
    pub tenant: TenantId,
    pub stage: Stage,
    bus: Bus,
    db: PgPool,
}

impl Attempt {
    /// Stores bytes as `<tenant>/<case>/<stage>/<attempt>/<name>`, recorded in the ledger as
    /// this attempt's until the commit makes them live.
    pub async fn put_object(&self, name: &str, bytes: &[u8]) -> Result<ObjectRef, StageError> {
        let key = format!("{}/{}/{}/{}/{name}", self.tenant, self.case_id, self.stage.as_str(), self.id);
        let at = objects::Placement {
            bucket: contracts::VOLUMES_BUCKET,
            key: &key,
            case_id: Some(self.case_id),
            owner: self.id,
        };
        objects::put_owned(&self.bus, &self.db, at, bytes).await.map_err(StageError::Transient)
    }

    /// Reads an object of this case, checking its hash; the key must belong to the case.
    pub async fn get_object(&self, obj: &ObjectRef) -> Result<Vec<u8>, StageError> {
        let prefix = format!("{}/{}/", self.tenant, self.case_id);
        if obj.bucket != contracts::VOLUMES_BUCKET || !obj.key.starts_with(&prefix) {
            return Err(StageError::Permanent(format!("object {} does not belong to this case", obj.key)));
        }
        Ok(self.bus.get_object(obj).await?)
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    pub fn db(&self) -> &PgPool {
        &self.db
    }
}

/// What the driver needs besides the worker.
#[derive(Clone, Debug)]
pub struct StageRuntime {
    pub bus: Bus,
    pub db: PgPool,
    pub metrics: Metrics,
    pub relay: RelayHandle,
    pub config: CommonConfig,
}

impl StageRuntime {
    /// Connects to the bus and the database (applying migrations) and starts this process's
    /// outbox relay and sweeper; every service, consuming or not, stands on this.
    pub async fn start(config: &CommonConfig, service: &str, shutdown: &Shutdown) -> anyhow::Result<StageRuntime> {
        let bus = Bus::connect_with(config).await?;
        let db = db::connect_with(&config.database_url, Duration::from_secs(30), config.migrate_on_start).await?;
        let metrics = Metrics::new(service);
        // With a bus user, this process relays only the events its user may publish.
        let scope = match crate::bus_auth::grant(service) {
            Some(g) if !config.nats_user.is_empty() => outbox::RelayScope::subjects(&g.publishes),
            _ => outbox::RelayScope::all(),
        };
        let relay = outbox::spawn_relay(
            db.clone(),
            bus.clone(),
            metrics.clone(),
            shutdown.clone(),
            Duration::from_secs(1),
            scope,
        );
        let rt = StageRuntime { bus, db, metrics, relay, config: config.clone() };
        crate::sweeper::spawn(rt.clone(), shutdown.clone());
        Ok(rt)
    }

    /// `/healthz`, `/readyz` and `/metrics` for this runtime.
    pub fn health_routes<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        crate::http::health_routes(Some(self.bus.clone()), Some(self.db.clone()), self.metrics.clone())
    }
}

/// What to tell the bus about a message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Disposition {
    /// Finished (done, failed, or nothing left to do).
    Ack,
    /// Never deliver again (undecodable or refused).
    Term,
    /// Deliver again after the delay.
    Retry(Duration),
}

/// The outcome label of one handled message (metrics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed,
    GaveUp,
    Retry,
    Duplicate,
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::GaveUp => "gave_up",
            Outcome::Retry => "retry",
            Outcome::Duplicate => "duplicate",
            Outcome::Refused => "refused",
        }
    }
}

/// Handles one delivered message from start to finish and says what to tell the bus. Every
/// database problem on the way ends in a retry, never in a lost case.
pub async fn handle<W: StageWorker>(
    rt: &StageRuntime,
    worker: &W,
    subject: &str,
    payload: &[u8],
) -> (Disposition, Outcome) {
    let spec = StageSpec::of(W::STAGE);
    let input: W::Input = match contracts::decode(payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(stage = spec.stage.as_str(), error = %e, "undecodable message refused");
            return (Disposition::Term, Outcome::Refused);
        }
    };
    let case_id = input.case_id();
    let span = tracing::info_span!("stage", stage = spec.stage.as_str(), case_id = %case_id);
    async {
        match handle_case(rt, worker, &spec, subject, payload, &input).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "bookkeeping failed; the message will come again");
                (Disposition::Retry(rt.config.backoff(1)), Outcome::Retry)
            }
        }
    }
    .instrument(span)
    .await
}

// Long on purpose: one message's whole life (claim, work, commit, publish, ack or nack); the branches share the attempt so that every path ends in exactly one ack or nack.
async fn handle_case<W: StageWorker>(
    rt: &StageRuntime,
    worker: &W,
    spec: &StageSpec,
    subject: &str,
    payload: &[u8],
    input: &W::Input,
) -> anyhow::Result<(Disposition, Outcome)> {
    let case_id = input.case_id();
    let tenant = input.tenant().clone();
    // 1. The message must be what the database says happened to this case, for this tenant.
    if contracts::subject_tenant(subject) != Some(tenant.as_str()) {
        tracing::warn!(subject, "message refused: its subject names another tenant than its body");
        return Ok((Disposition::Term, Outcome::Refused));
    }
    let row: Option<(String, String)> = sqlx::query_as("SELECT tenant_id, status FROM cases WHERE id = $1")
        .bind(case_id)
        .fetch_optional(&rt.db)
        .await?;
    let Some((row_tenant, status)) = row else {
        tracing::warn!("message refused: no such case");
        return Ok((Disposition::Term, Outcome::Refused));
    };
    if row_tenant != tenant.as_str() {
        tracing::warn!("message refused: the case belongs to another tenant");
        return Ok((Disposition::Term, Outcome::Refused));
    }
    match db::stage_state(&rt.db, case_id, spec.upstream).await? {
        StageState::Done { output } if output == payload => {}
        _ => {
            tracing::warn!(
                upstream = spec.upstream.as_str(),
                "message refused: it is not what the upstream stage recorded"
            );
            return Ok((Disposition::Term, Outcome::Refused));
        }
    }
    // 2. Idempotency: a finished stage or case needs nothing more (its events are in the outbox).
    let status = CaseStatus::parse(&status);
    if spec.side_branch {
        if status != Some(CaseStatus::Done) {
            return Ok((Disposition::Ack, Outcome::Duplicate));
        }
    } else if status.is_some_and(CaseStatus::is_final) {
        return Ok((Disposition::Ack, Outcome::Duplicate));
    }
    match db::stage_state(&rt.db, case_id, spec.stage).await? {
        StageState::Done { .. } | StageState::Failed => return Ok((Disposition::Ack, Outcome::Duplicate)),
        StageState::New | StageState::Running { .. } => {}
    }
    // 3. A new attempt, unless the attempts have run out.
    let attempt_id = Uuid::new_v4();
    let Some(number) = db::stage_started(&rt.db, case_id, spec.stage, attempt_id, spec.working).await? else {
        return Ok((Disposition::Ack, Outcome::Duplicate));
    };
    let cap = rt.config.max_deliver.max(1) as i32;
    if number > cap {
        let last = db::last_error(&rt.db, case_id, spec.stage).await?.unwrap_or_else(|| "no error recorded".into());
        let reason = format!("gave up after {} attempts (each interrupted or failed); last error: {last}", number - 1);
        give_up(rt, spec, &tenant, case_id, &reason).await?;
        tracing::warn!(attempts = number - 1, "attempts exhausted");
        return Ok((Disposition::Ack, Outcome::GaveUp));
    }
    let attempt = Attempt {
        id: attempt_id,
        number,
        case_id,
        tenant: tenant.clone(),
        stage: spec.stage,
        bus: rt.bus.clone(),
        db: rt.db.clone(),
    };
    // 4. The work, with a heartbeat so the sweeper knows the attempt is alive.
    let work = worker.work(&attempt, input);
    tokio::pin!(work);
    let mut tick = tokio::time::interval(heartbeat_every(&rt.config));
    tick.tick().await;
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tick.tick() => {
                if let Err(e) = db::heartbeat(&rt.db, case_id, spec.stage).await {
                    tracing::warn!(error = %e, "heartbeat not recorded");
                }
            }
        }
    };
    // 5. Commit, fail, or retry.
    match result {
        Ok(output) => commit(rt, worker, spec, &attempt, input, &output).await,
        Err(StageError::Permanent(reason)) => {
            objects::discard(&rt.bus, &rt.db, &rt.metrics, attempt_id).await;
            give_up(rt, spec, &tenant, case_id, &reason).await?;
            tracing::warn!(reason = %reason, "stage failed");
            Ok((Disposition::Ack, Outcome::Failed))
        }
        Err(StageError::Transient(e)) => {
            objects::discard(&rt.bus, &rt.db, &rt.metrics, attempt_id).await;
            let text = format!("{e:#}");
            if number >= cap {
                let reason = format!("gave up after {number} attempts; last error: {text}");
                give_up(rt, spec, &tenant, case_id, &reason).await?;
                tracing::warn!(attempts = number, error = %text, "attempts exhausted");
                return Ok((Disposition::Ack, Outcome::GaveUp));
            }
            db::stage_error(&rt.db, case_id, spec.stage, &text).await?;
            let delay = rt.config.backoff(number);
            tracing::warn!(attempt = number, retry_in_s = delay.as_secs_f64(), error = %text, "attempt failed; will retry");
            Ok((Disposition::Retry(delay), Outcome::Retry))
        }
    }
}

/// Ends a stage as failed: the case too (with `case.failed`), unless the stage is a side branch.
async fn give_up(
    rt: &StageRuntime,
    spec: &StageSpec,
    tenant: &TenantId,
    case_id: Uuid,
    reason: &str,
) -> sqlx::Result<()> {
    if spec.side_branch {
        db::fail_stage(&rt.db, case_id, spec.stage, reason).await
    } else {
        db::fail_case(&rt.db, tenant, case_id, spec.stage, reason).await?;
        rt.relay.kick();
        Ok(())
    }
}

async fn commit<W: StageWorker>(
    rt: &StageRuntime,
    worker: &W,
    spec: &StageSpec,
    attempt: &Attempt,
    input: &W::Input,
    output: &W::Output,
) -> anyhow::Result<(Disposition, Outcome)> {
    let encoded = worker.encode(output)?;
    let mut tx = rt.db.begin().await?;
    if !db::stage_done(&mut tx, attempt.case_id, spec.stage, &encoded).await? {
        // Another attempt finished first; its output stands, ours is discarded.
        tx.rollback().await?;
        objects::discard(&rt.bus, &rt.db, &rt.metrics, attempt.id).await;
        tracing::info!(attempt = attempt.number, "another attempt committed this stage first; discarding ours");
        return Ok((Disposition::Ack, Outcome::Duplicate));
    }
    worker.commit(&mut tx, input, output).await?;
    if let Some(status) = spec.after {
        db::set_case_status(&mut tx, attempt.case_id, status).await?;
    }
    objects::mark_live(&mut tx, attempt.id).await?;
    outbox::enqueue(&mut tx, &spec.output.subject(&attempt.tenant), &spec.output.msg_id(attempt.case_id), &encoded)
        .await?;
    tx.commit().await?;
    rt.relay.kick();
    Ok((Disposition::Ack, Outcome::Done))
}

fn heartbeat_every(cfg: &CommonConfig) -> Duration {
    Duration::from_secs_f64((cfg.ack_wait_s.max(3) as f64 / 3.0).min(20.0))
}

/// Reports the durable consumer's lag (undelivered and unacknowledged messages) every few
/// seconds until shutdown.
fn spawn_lag_monitor(
    consumer: async_nats::jetstream::consumer::PullConsumer,
    durable: &'static str,
    metrics: Metrics,
    shutdown: Shutdown,
) {
    tokio::spawn(async move {
        loop {
            match consumer.get_info().await {
                Ok(info) => metrics.set_consumer_lag(durable, info.num_pending, info.num_ack_pending as u64),
                Err(e) => tracing::debug!(consumer = durable, error = %e, "consumer info unavailable"),
            }
            tokio::select! {
                _ = tokio::time::sleep(LAG_POLL) => {}
                _ = shutdown.wait() => break,
            }
        }
    });
}

/// How often the consumer's lag is read from the bus.
const LAG_POLL: Duration = Duration::from_secs(5);

/// Consumes the worker's input events until shutdown: at most `workers` messages at once,
/// each kept (progress acks) while it is handled; on shutdown no new message is taken, those
/// in hand are finished, and the outbox gets a last pass.
// Long on purpose: the consumer loop with its shutdown, lag and in-flight bookkeeping in one select.
pub async fn run<W: StageWorker>(rt: StageRuntime, worker: Arc<W>, shutdown: Shutdown) -> anyhow::Result<()> {
    let spec = StageSpec::of(W::STAGE);
    let ack_wait = Duration::from_secs(rt.config.ack_wait_s.max(1));
    let workers = rt.config.workers.max(1);
    let consumer = rt.bus.consumer(spec.durable, &spec.input.all_tenants(), ack_wait, workers as i64 * 4).await?;
    tracing::info!(consumer = spec.durable, stage = spec.stage.as_str(), "consuming");
    spawn_lag_monitor(consumer.clone(), spec.durable, rt.metrics.clone(), shutdown.clone());
    let permits = Arc::new(tokio::sync::Semaphore::new(workers));
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
        if msg.info().is_ok_and(|i| i.delivered > 1) {
            rt.metrics.redelivered(spec.stage.as_str());
        }
        let rt = rt.clone();
        let worker = worker.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let _in_flight = rt.metrics.in_flight();
            let started = Instant::now();
            let work = handle(&rt, worker.as_ref(), msg.subject.as_str(), &msg.payload);
            tokio::pin!(work);
            // Keep the message ours while we work: JetStream redelivers after ack_wait otherwise.
            let mut tick = tokio::time::interval(ack_wait / 3);
            tick.tick().await;
            let (disposition, outcome) = loop {
                tokio::select! {
                    o = &mut work => break o,
                    _ = tick.tick() => {
                        if let Err(e) = msg.ack_with(AckKind::Progress).await {
                            tracing::warn!(error = %e, "progress ack failed; a redelivery may run beside this attempt");
                        }
                    }
                }
            };
            rt.metrics.observe_message(spec.stage.as_str(), outcome.as_str(), started.elapsed().as_secs_f64());
            let ack = match disposition {
                Disposition::Ack => AckKind::Ack,
                Disposition::Term => AckKind::Term,
                Disposition::Retry(d) => AckKind::Nak(Some(d)),
            };
            if let Err(e) = msg.ack_with(ack).await {
                tracing::warn!(error = %e, "ack failed; the message will be redelivered");
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
    if let Err(e) = outbox::relay_once(&rt.db, &rt.bus, &rt.metrics, 1000, rt.relay.scope()).await {
        tracing::warn!(error = format!("{e:#}"), "last outbox pass failed; another process will publish");
    }
    Ok(())
}
