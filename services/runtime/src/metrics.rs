//! Prometheus metrics of one service process: messages by stage and outcome, stage time, the
//! outbox, the sweeper and object cleanup. Rendered by `/metrics` (see [`crate::http`]).

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Metrics of one service process (cheap to clone; clones share the counters).
#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// The service these metrics belong to (the `service` label of every series).
    pub service: String,
    messages: IntCounterVec,
    duration: HistogramVec,
    outbox_published: IntCounter,
    outbox_failed: IntCounter,
    outbox_pending: IntGauge,
    sweeper: IntCounterVec,
    objects_deleted: IntCounter,
    http_rejected: IntCounterVec,
    in_flight: IntGauge,
    pseudo_labels: IntCounterVec,
    training_runs: IntCounterVec,
    model_changes: IntCounterVec,
    consumer_pending: IntGaugeVec,
    consumer_ack_pending: IntGaugeVec,
    redeliveries: IntCounterVec,
    stale_cases: IntGauge,
    js_storage: IntGauge,
    js_storage_limit: IntGauge,
    object_store: IntGaugeVec,
}

/// Registers a newly made metric and returns it (clones share the series).
#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "metric names and labels are constants; a bad one fails every test at start"
)]
fn registered<M: Collector + Clone + 'static>(registry: &Registry, made: prometheus::Result<M>) -> M {
    let m = made.expect("valid metric");
    registry.register(Box::new(m.clone())).expect("register metric");
    m
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::new(name, help))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help))
}

impl Metrics {
    // Long on purpose: every series is registered in one list, so /metrics and this list read alike.
    #[allow(
        clippy::expect_used,
        clippy::unwrap_used,
        reason = "metric names and labels are constants; a bad one fails every test at start"
    )]
    pub fn new(service: &str) -> Metrics {
        let registry =
            Registry::new_custom(Some("gmmas".into()), Some([("service".to_string(), service.to_string())].into()))
                .expect("valid registry");
        let messages = counter_vec(
            &registry,
            "messages_total",
            "Messages handled, by stage and outcome (done, failed, retry, gave_up, duplicate, refused)",
            &["stage", "outcome"],
        );
        let duration = HistogramVec::new(
            HistogramOpts::new("stage_duration_seconds", "Time to handle one message, by stage")
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
            &["stage"],
        )
        .expect("valid metric");
        registry.register(Box::new(duration.clone())).expect("register metric");
        Metrics {
            messages,
            duration,
            outbox_published: counter(&registry, "outbox_published_total", "Outbox events published to the stream"),
            outbox_failed: counter(
                &registry,
                "outbox_publish_failures_total",
                "Failed attempts to publish an outbox event",
            ),
            outbox_pending: gauge(
                &registry,
                "outbox_pending",
                "Outbox events not yet published, as last seen by this relay",
            ),
            sweeper: counter_vec(
                &registry,
                "sweeper_actions_total",
                "Stale cases re-driven or failed by the sweeper, and orphan objects removed",
                &["action"],
            ),
            objects_deleted: counter(&registry, "objects_deleted_total", "Objects deleted from the object store"),
            http_rejected: counter_vec(
                &registry,
                "http_rejected_total",
                "Requests turned away before any work (reason: backlog, busy, timeout)",
                &["reason"],
            ),
            in_flight: gauge(&registry, "in_flight", "Messages or uploads being handled right now"),
            pseudo_labels: counter_vec(
                &registry,
                "pseudo_labels_total",
                "Stage I pseudo-labels by task and decision (accepted, rejected)",
                &["task", "decision"],
            ),
            training_runs: counter_vec(
                &registry,
                "training_runs_total",
                "Training runs by outcome (started, resumed, promoted, rejected, failed)",
                &["outcome"],
            ),
            model_changes: counter_vec(
                &registry,
                "model_changes_total",
                "Registry changes by kind (candidate, promoted, rejected, rolled_back)",
                &["change"],
            ),
            consumer_pending: gauge_vec(
                &registry,
                "consumer_pending_messages",
                "Messages in the stream not yet delivered to this durable consumer (lag)",
                &["consumer"],
            ),
            consumer_ack_pending: gauge_vec(
                &registry,
                "consumer_ack_pending_messages",
                "Messages delivered to this durable consumer and not yet acknowledged",
                &["consumer"],
            ),
            redeliveries: counter_vec(
                &registry,
                "redeliveries_total",
                "Messages received that the bus had delivered before, by stage",
                &["stage"],
            ),
            stale_cases: gauge(
                &registry,
                "stale_cases",
                "Cases past the stale threshold with no live attempt, at the last sweep of this process",
            ),
            js_storage: gauge(
                &registry,
                "jetstream_storage_bytes",
                "JetStream storage used by the account that holds the stream and the object store",
            ),
            js_storage_limit: gauge(
                &registry,
                "jetstream_storage_limit_bytes",
                "JetStream storage limit of that account (-1 or 0: no limit)",
            ),
            object_store: gauge_vec(
                &registry,
                "object_store_bytes",
                "Bytes held by each object-store bucket",
                &["bucket"],
            ),
            registry,
            service: service.to_string(),
        }
    }

    /// The lag of a durable consumer as the bus last reported it.
    pub fn set_consumer_lag(&self, consumer: &str, pending: u64, ack_pending: u64) {
        self.consumer_pending.with_label_values(&[consumer]).set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.consumer_ack_pending.with_label_values(&[consumer]).set(i64::try_from(ack_pending).unwrap_or(i64::MAX));
    }

    pub fn redelivered(&self, stage: &str) {
        self.redeliveries.with_label_values(&[stage]).inc();
    }

    pub fn set_stale_cases(&self, n: u64) {
        self.stale_cases.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Storage of the JetStream account: bytes used and the limit (-1 when unlimited).
    pub fn set_jetstream_storage(&self, used: u64, limit: i64) {
        self.js_storage.set(i64::try_from(used).unwrap_or(i64::MAX));
        self.js_storage_limit.set(limit);
    }

    pub fn set_object_store_bytes(&self, bucket: &str, bytes: u64) {
        self.object_store.with_label_values(&[bucket]).set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn observe_message(&self, stage: &str, outcome: &str, seconds: f64) {
        self.messages.with_label_values(&[stage, outcome]).inc();
        self.duration.with_label_values(&[stage]).observe(seconds);
    }

    pub fn outbox_published(&self, n: u64) {
        self.outbox_published.inc_by(n);
    }

    pub fn outbox_failed(&self) {
        self.outbox_failed.inc();
    }

    pub fn set_outbox_pending(&self, n: i64) {
        self.outbox_pending.set(n);
    }

    pub fn sweeper_action(&self, action: &str, n: u64) {
        self.sweeper.with_label_values(&[action]).inc_by(n);
    }

    pub fn objects_deleted(&self, n: u64) {
        self.objects_deleted.inc_by(n);
    }

    pub fn http_rejected(&self, reason: &str) {
        self.http_rejected.with_label_values(&[reason]).inc();
    }

    pub fn pseudo_label(&self, task: &str, accepted: bool) {
        self.pseudo_labels.with_label_values(&[task, if accepted { "accepted" } else { "rejected" }]).inc();
    }

    pub fn training_run(&self, outcome: &str) {
        self.training_runs.with_label_values(&[outcome]).inc();
    }

    pub fn model_change(&self, change: &str) {
        self.model_changes.with_label_values(&[change]).inc();
    }

    /// Counts one unit of work in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
