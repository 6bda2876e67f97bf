//! Report: consumes `scan.analyzed`, writes the paper's GMMAS-GPT report (Fig. 11 chart) through
//! a local LLM grounded in the knowledge base, validates it, falls back to a deterministic report,
//! stores it with its provenance, publishes `report.ready`, and regenerates fallbacks once the LLM is back.

pub mod facts;
pub mod fallback;
pub mod kb;
pub mod llm;
pub mod prompt;
pub mod render;
pub mod report;
pub mod retrieve;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use gmmas_contracts::{self as contracts, Event, ReportReady, ScanAnalyzed, Stage, TenantId};
use gmmas_runtime::db::{self, StageState};
use gmmas_runtime::worker::{self, Attempt, Consuming, StageError, StageRuntime, StageWorker};
use gmmas_runtime::{CommonConfig, Shutdown, outbox};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::facts::Facts;
use crate::kb::KnowledgeBase;
use crate::llm::{Backend, ChatRequest, GenOptions, Llm, LlmError};
use crate::report::ReportBody;

/// Configuration of the report service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportConfig {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// `ollama` (Ollama API through ollama-rs), `openai` (OpenAI-compatible: llama-server,
    /// vLLM) or `none` (every report from the deterministic fallback).
    pub llm_backend: String,
    /// Base URL of the LLM server.
    pub llm_url: String,
    /// Model name on that server.
    pub llm_model: String,
    /// When set, the server's digest of the model must equal it (else the fallback is used).
    pub llm_model_digest: String,
    /// Seconds one LLM call may take before it counts as unavailable.
    pub llm_timeout_s: f64,
    /// LLM calls in flight from this process at once.
    pub llm_max_concurrency: usize,
    /// LLM answers tried per report (a rejected answer is retried once with the reasons).
    pub llm_attempts: u32,
    /// Longest answer, in tokens.
    pub llm_max_tokens: i32,
    /// Context window asked for (Ollama `num_ctx`).
    pub llm_num_ctx: u64,
    pub llm_temperature: f32,
    pub llm_seed: i32,
    /// Embedding API for retrieval (`ollama` or `openai`); empty URL = BM25.
    pub embed_backend: String,
    pub embed_url: String,
    pub embed_model: String,
    /// Passages retrieved per chart row (and for treatment and general notes).
    pub retrieve_per_row: usize,
    /// Knowledge-base file (TOML); empty = the built-in one.
    pub kb_path: String,
    /// Seconds between passes that regenerate fallback reports (LLM unavailable) through the
    /// LLM once it answers; 0 = never.
    pub regenerate_interval_s: u64,
    /// Reports regenerated per pass at most.
    pub regenerate_batch: i64,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            common: CommonConfig { http_addr: "127.0.0.1:8086".into(), ack_wait_s: 120, ..Default::default() },
            llm_backend: "ollama".into(),
            llm_url: "http://127.0.0.1:11434".into(),
            llm_model: "smollm2:135m".into(),
            llm_model_digest: String::new(),
            llm_timeout_s: 120.0,
            llm_max_concurrency: 1,
            llm_attempts: 2,
            llm_max_tokens: 1024,
            llm_num_ctx: 4096,
            llm_temperature: 0.0,
            llm_seed: 42,
            embed_backend: "ollama".into(),
            embed_url: String::new(),
            embed_model: "all-minilm".into(),
            retrieve_per_row: 2,
            kb_path: String::new(),
            regenerate_interval_s: 60,
            regenerate_batch: 10,
        }
    }
}

/// One LLM attempt as stored with the report (no prompt text, no answer text).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptLog {
    pub attempt: u32,
    /// `valid`, `invalid` (bad JSON or failed validation), `unavailable` or `timeout`.
    pub outcome: String,
    pub ms: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub prompt_sha256: String,
    pub errors: Vec<String>,
}

/// What produced a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportPath {
    Llm,
    Fallback,
}

impl ReportPath {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportPath::Llm => "llm",
            ReportPath::Fallback => "fallback",
        }
    }
}

/// A generated report, before it is stored.
#[derive(Debug, Clone)]
pub struct Generated {
    pub body: ReportBody,
    pub facts: Facts,
    pub path: ReportPath,
    /// `disabled`, `unavailable`, `model-mismatch` or `invalid` for the fallback.
    pub fallback_reason: Option<String>,
    pub attempts: Vec<AttemptLog>,
    pub llm_backend: Option<String>,
    pub llm_model: Option<String>,
    pub llm_model_digest: Option<String>,
    pub prompt_sha256: Option<String>,
    pub retrieval: String,
    pub passages: Vec<String>,
    /// Validation of the stored body (the fallback is checked too).
    pub findings: Vec<String>,
    pub duration_ms: u64,
}

/// Counters of the report service.
#[derive(Clone, Debug)]
struct ReportMetrics {
    reports: IntCounterVec,
    attempts: IntCounterVec,
    seconds: HistogramVec,
}

impl ReportMetrics {
    fn register(registry: &prometheus::Registry) -> anyhow::Result<ReportMetrics> {
        let reports = IntCounterVec::new(
            Opts::new("reports_total", "Reports stored, by path (llm, fallback) and fallback reason"),
            &["path", "reason"],
        )?;
        let attempts = IntCounterVec::new(
            Opts::new("report_llm_attempts_total", "LLM answers, by outcome (valid, invalid, unavailable, timeout)"),
            &["outcome"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new("report_seconds", "Time to write one report, by path")
                .buckets(vec![0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0]),
            &["path"],
        )?;
        registry.register(Box::new(reports.clone()))?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(ReportMetrics { reports, attempts, seconds })
    }
}

/// The report writer: knowledge base, retrieval, LLM and fallback.
pub struct Reporter {
    pub kb: KnowledgeBase,
    pub llm: Option<Llm>,
    pub embedder: Option<Llm>,
    pub config: ReportConfig,
    bm25: retrieve::Bm25,
    passage_vectors: Mutex<Option<Vec<Vec<f32>>>>,
    metrics: Option<ReportMetrics>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").field("kb", &self.kb.version).field("llm", &self.llm).finish_non_exhaustive()
    }
}

impl Reporter {
    pub fn new(config: &ReportConfig) -> anyhow::Result<Reporter> {
        let kb = KnowledgeBase::load(&config.kb_path).context("setting `kb_path`")?;
        let timeout = Duration::from_secs_f64(config.llm_timeout_s.max(0.1));
        let llm = match config.llm_backend.as_str() {
            "none" | "" => None,
            b => {
                let backend = Backend::parse(b).context("setting `llm_backend`: expected ollama, openai or none")?;
                Some(Llm::new(backend, &config.llm_url, &config.llm_model, timeout, config.llm_max_concurrency)?)
            }
        };
        let embedder = if config.embed_url.is_empty() {
            None
        } else {
            let backend =
                Backend::parse(&config.embed_backend).context("setting `embed_backend`: expected ollama or openai")?;
            Some(Llm::new(backend, &config.embed_url, &config.embed_model, timeout, 2)?)
        };
        let bm25 = retrieve::Bm25::new(&kb.passages);
        Ok(Reporter {
            kb,
            llm,
            embedder,
            config: config.clone(),
            bm25,
            passage_vectors: Mutex::new(None),
            metrics: None,
        })
    }

    /// Ranks the passages for the analysis: embeddings when configured and answering, else BM25.
    pub async fn retrieve(&self, facts: &Facts) -> (Vec<String>, String) {
        let queries = retrieve::queries(facts);
        let per_row = self.config.retrieve_per_row;
        if let Some(embedder) = &self.embedder {
            match self.embedding_scores(embedder, &queries).await {
                Ok(scores) => {
                    let ids = retrieve::select(&self.kb, &queries, &scores, per_row);
                    return (ids, format!("embedding:{}", embedder.model));
                }
                Err(e) => tracing::warn!(error = %e, "embedding retrieval failed; using BM25"),
            }
        }
        let scores: Vec<Vec<f64>> = queries.iter().map(|(_, q)| self.bm25.scores(q)).collect();
        let method = if self.embedder.is_some() { "bm25 (embeddings unavailable)" } else { "bm25" };
        (retrieve::select(&self.kb, &queries, &scores, per_row), method.to_string())
    }

    #[allow(clippy::expect_used, clippy::unwrap_used, reason = "the cache is filled just above")]
    async fn embedding_scores(&self, embedder: &Llm, queries: &[(kb::Row, String)]) -> Result<Vec<Vec<f64>>, LlmError> {
        let mut cached = self.passage_vectors.lock().await;
        if cached.is_none() {
            let texts: Vec<String> =
                self.kb.passages.iter().map(|p| format!("{} {}", p.keywords.join(" "), p.text)).collect();
            *cached = Some(embedder.embed(&texts).await?);
        }
        let passages = cached.as_ref().expect("filled above");
        let q: Vec<String> = queries.iter().map(|(_, t)| t.clone()).collect();
        let qv = embedder.embed(&q).await?;
        Ok(qv.iter().map(|v| passages.iter().map(|p| retrieve::cosine(v, p)).collect()).collect())
    }

    fn gen_options(&self) -> GenOptions {
        GenOptions {
            temperature: self.config.llm_temperature,
            seed: self.config.llm_seed,
            max_tokens: self.config.llm_max_tokens,
            num_ctx: self.config.llm_num_ctx,
        }
    }

    /// Writes the report of one analysis: the LLM's when it answers with a valid report within
    /// the attempts, the deterministic fallback otherwise. Never fails.
    // Long on purpose: the attempts at an LLM report and the fallback share the retrieved passages and the attempt log that the result records.
    pub async fn generate(&self, analysis: &ScanAnalyzed) -> Generated {
        let started = Instant::now();
        let facts = Facts::from_analysis(analysis);
        let (passages, retrieval) = self.retrieve(&facts).await;
        let mut attempts = Vec::new();
        let mut reason = "disabled".to_string();
        let mut digest = None;
        let mut accepted: Option<(ReportBody, String)> = None;
        let mut first_hash = None;
        if let Some(llm) = &self.llm {
            match llm.model_digest().await {
                Err(e) => {
                    reason = "unavailable".into();
                    attempts.push(AttemptLog {
                        attempt: 1,
                        outcome: "unavailable".into(),
                        ms: started.elapsed().as_millis() as u64,
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        prompt_sha256: String::new(),
                        errors: vec![e.to_string()],
                    });
                }
                Ok(d)
                    if !self.config.llm_model_digest.is_empty()
                        && d.as_deref() != Some(&self.config.llm_model_digest) =>
                {
                    reason = "model-mismatch".into();
                    tracing::warn!(served = ?d, pinned = %self.config.llm_model_digest, "the served model is not the pinned one");
                    digest = d;
                }
                Ok(d) => {
                    digest = d;
                    let (outcome, hash) = self.ask(llm, &facts, &passages, &mut attempts).await;
                    first_hash = hash;
                    match outcome {
                        Ok(body) => {
                            accepted =
                                Some((body, attempts.last().map(|a| a.prompt_sha256.clone()).unwrap_or_default()))
                        }
                        Err(r) => reason = r,
                    }
                }
            }
        }
        if let Some(m) = &self.metrics {
            attempts.iter().for_each(|a| m.attempts.with_label_values(&[&a.outcome]).inc());
        }
        let llm_model = self.llm.as_ref().map(|l| l.model.clone());
        let llm_backend = self.llm.as_ref().map(|l| l.backend.as_str().to_string());
        let (body, path, fallback_reason, prompt_sha256, cited) = match accepted {
            Some((body, hash)) => (body, ReportPath::Llm, None, Some(hash), passages.clone()),
            None => {
                let (body, used) = fallback::build(&facts, &self.kb);
                let mut allowed = passages.clone();
                allowed.extend(used);
                (body, ReportPath::Fallback, Some(reason), first_hash, allowed)
            }
        };
        let findings = validate::validate(&body, &facts, &self.kb, &cited).0;
        if !findings.is_empty() {
            tracing::error!(errors = findings.len(), "the stored report does not pass validation");
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        if let Some(m) = &self.metrics {
            m.reports.with_label_values(&[path.as_str(), fallback_reason.as_deref().unwrap_or("")]).inc();
            m.seconds.with_label_values(&[path.as_str()]).observe(duration_ms as f64 / 1000.0);
        }
        Generated {
            body,
            facts,
            path,
            fallback_reason,
            attempts,
            llm_backend,
            llm_model,
            llm_model_digest: digest,
            prompt_sha256,
            retrieval,
            passages,
            findings,
            duration_ms,
        }
    }

    /// The LLM attempts: the answer of the first that validates, or the fallback reason.
    /// Returns the hash of the first prompt as well.
    async fn ask(
        &self,
        llm: &Llm,
        facts: &Facts,
        passages: &[String],
        log: &mut Vec<AttemptLog>,
    ) -> (Result<ReportBody, String>, Option<String>) {
        let base = prompt::build(facts, &self.kb, passages);
        let schema = report::schema(passages);
        let opts = self.gen_options();
        let opts_text = format!("{opts:?}");
        let mut feedback: Vec<String> = Vec::new();
        let mut first_hash = None;
        for n in 1..=self.config.llm_attempts.max(1) {
            let mut p = base.clone();
            if !feedback.is_empty() {
                p.user.push_str(
                    "\n\nYour previous answer was rejected for these reasons; write it again without them:\n- ",
                );
                p.user.push_str(&feedback.join("\n- "));
            }
            let hash = prompt::hash(&p, &schema, &llm.model, &opts_text);
            first_hash.get_or_insert_with(|| hash.clone());
            let mut entry = AttemptLog {
                attempt: n,
                outcome: String::new(),
                ms: 0,
                prompt_tokens: 0,
                completion_tokens: 0,
                prompt_sha256: hash,
                errors: vec![],
            };
            match llm.chat_json(ChatRequest { system: &p.system, user: &p.user, schema: &schema, opts: &opts }).await {
                Err(e @ (LlmError::Unavailable(_) | LlmError::Timeout(_))) => {
                    entry.outcome = if matches!(e, LlmError::Timeout(_)) { "timeout" } else { "unavailable" }.into();
                    entry.errors.push(e.to_string());
                    tracing::warn!(attempt = n, outcome = %entry.outcome, "LLM call failed; using the fallback");
                    log.push(entry);
                    return (Err("unavailable".into()), first_hash);
                }
                Err(e) => {
                    entry.outcome = "invalid".into();
                    entry.errors.push(e.to_string());
                }
                Ok((content, stats)) => {
                    entry.ms = stats.ms;
                    entry.prompt_tokens = stats.prompt_tokens;
                    entry.completion_tokens = stats.completion_tokens;
                    match serde_json::from_str::<ReportBody>(&content) {
                        Err(e) => {
                            entry.outcome = "invalid".into();
                            entry.errors.push(format!("the answer is not the report JSON: {e}"));
                        }
                        Ok(mut body) => {
                            dedup_cites(&mut body);
                            let findings = validate::validate(&body, facts, &self.kb, passages);
                            if findings.passed() {
                                entry.outcome = "valid".into();
                                log.push(entry);
                                return (Ok(body), first_hash);
                            }
                            entry.outcome = "invalid".into();
                            entry.errors = findings.0;
                        }
                    }
                }
            }
            tracing::info!(attempt = n, errors = entry.errors.len(), "LLM answer rejected");
            feedback = entry.errors.iter().take(8).cloned().collect();
            log.push(entry);
        }
        (Err("invalid".into()), first_hash)
    }
}

/// Drops a passage cited twice in one cell (small models repeat list items).
fn dedup_cites(body: &mut ReportBody) {
    let rows = [
        &mut body.chart.tumor_compartments,
        &mut body.chart.histological_subtype,
        &mut body.chart.molecular_information,
    ];
    let mut cells: Vec<&mut report::Cell> =
        rows.into_iter().flat_map(|r| [&mut r.prognostic_assessment, &mut r.diagnostic_opinion]).collect();
    cells.push(&mut body.treatment);
    for c in cells {
        let mut seen = Vec::new();
        c.cites.retain(|id| {
            let new = !seen.contains(id);
            seen.push(id.clone());
            new
        });
    }
}

/// A report ready to be stored (serialized as its `report.ready` event).
#[derive(Debug, Clone, Serialize)]
pub struct StoredReport {
    #[serde(skip)]
    pub id: Uuid,
    #[serde(skip)]
    pub tenant: TenantId,
    #[serde(skip)]
    pub case_id: Uuid,
    #[serde(skip)]
    pub analysis_id: Uuid,
    #[serde(skip)]
    pub version: i32,
    #[serde(skip)]
    pub generated: Generated,
    #[serde(skip)]
    pub json: Value,
    #[serde(skip)]
    pub html: String,
    #[serde(flatten)]
    pub event: ReportReady,
}

impl StoredReport {
    /// The JSON and HTML of a generated report.
    pub fn new(r: &Reporter, analysis: &ScanAnalyzed, version: i32, g: Generated) -> StoredReport {
        let id = Uuid::new_v4();
        let created_at = Utc::now();
        let created = created_at.to_rfc3339();
        let case = analysis.case_id.to_string();
        let prov = render::Provenance {
            case_id: &case,
            version,
            path: g.path.as_str(),
            fallback_reason: g.fallback_reason.as_deref(),
            llm_model: g.llm_model.as_deref(),
            llm_model_digest: g.llm_model_digest.as_deref(),
            prompt_sha256: g.prompt_sha256.as_deref(),
            kb_version: &r.kb.version,
            retrieval: &g.retrieval,
            created_at: &created,
        };
        let html = render::html(&g.body, &g.facts, &r.kb, &prov);
        let mut cited: Vec<&String> = g.body.cells().into_iter().flat_map(|(_, c)| c.cites.iter()).collect();
        cited.sort();
        cited.dedup();
        let sources: Vec<Value> =
            cited.iter().filter_map(|id| r.kb.get(id)).map(|p| json!({"id": p.id, "source": p.source})).collect();
        let json = json!({
            "report_id": id,
            "case_id": analysis.case_id,
            "analysis_id": analysis.analysis_id,
            "version": version,
            "path": g.path.as_str(),
            "fallback_reason": g.fallback_reason,
            "summary": g.body.summary,
            "chart": g.body.chart,
            "treatment": g.body.treatment,
            "disclaimer": g.body.disclaimer,
            "sources": sources,
            "facts": g.facts,
            "validation": {"passed": g.findings.is_empty(), "errors": g.findings},
            "llm": {
                "backend": g.llm_backend,
                "model": g.llm_model,
                "digest": g.llm_model_digest,
                "attempts": g.attempts,
            },
            "prompt_sha256": g.prompt_sha256,
            "kb_version": r.kb.version,
            "retrieval": {"method": g.retrieval, "passages": g.passages},
            "duration_ms": g.duration_ms,
            "created_at": created_at,
        });
        let event = ReportReady {
            schema_version: contracts::SCHEMA_VERSION,
            tenant: analysis.tenant.clone(),
            case_id: analysis.case_id,
            analysis_id: analysis.analysis_id,
            report_id: id,
            version: version as u32,
            path: g.path.as_str().into(),
            llm_model: if g.path == ReportPath::Llm { g.llm_model.clone().unwrap_or_default() } else { String::new() },
            kb_version: r.kb.version.clone(),
            created_at,
        };
        StoredReport {
            id,
            tenant: analysis.tenant.clone(),
            case_id: analysis.case_id,
            analysis_id: analysis.analysis_id,
            version,
            generated: g,
            json,
            html,
            event,
        }
    }

    /// Inserts the row (nothing when this version exists already); true when inserted.
    pub async fn insert(&self, tx: &mut PgConnection) -> sqlx::Result<bool> {
        let g = &self.generated;
        let attempts = serde_json::to_value(&g.attempts).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let r = sqlx::query(
            "INSERT INTO reports (id, case_id, analysis_id, version, path, fallback_reason, llm_backend, llm_model,
                llm_model_digest, llm_attempts, prompt_sha256, kb_version, retrieval, body, html, attempts, duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
             ON CONFLICT (case_id, version) DO NOTHING",
        )
        .bind(self.id)
        .bind(self.case_id)
        .bind(self.analysis_id)
        .bind(self.version)
        .bind(g.path.as_str())
        .bind(&g.fallback_reason)
        .bind(&g.llm_backend)
        .bind(&g.llm_model)
        .bind(&g.llm_model_digest)
        .bind(g.attempts.iter().filter(|a| a.outcome != "unavailable").count() as i32)
        .bind(&g.prompt_sha256)
        .bind(&self.event.kb_version)
        .bind(&g.retrieval)
        .bind(&self.json)
        .bind(&self.html)
        .bind(attempts)
        .bind(g.duration_ms as i64)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 1 {
            db::audit(
                tx,
                "report",
                "report.stored",
                Some(self.tenant.as_str()),
                Some(self.case_id),
                json!({"version": self.version, "path": g.path.as_str(), "reason": g.fallback_reason}),
            )
            .await?;
        }
        Ok(r.rows_affected() == 1)
    }
}

/// The report stage.
pub struct ReportStage {
    pub reporter: Arc<Reporter>,
}

impl StageWorker for ReportStage {
    type Input = ScanAnalyzed;
    type Output = StoredReport;

    const STAGE: Consuming = Consuming::Report;

    async fn work(&self, _attempt: &Attempt, msg: &ScanAnalyzed) -> Result<StoredReport, StageError> {
        let g = self.reporter.generate(msg).await;
        tracing::info!(
            path = g.path.as_str(),
            reason = g.fallback_reason.as_deref().unwrap_or(""),
            attempts = g.attempts.len(),
            duration_ms = g.duration_ms,
            "report written"
        );
        Ok(StoredReport::new(&self.reporter, msg, 1, g))
    }

    async fn commit(&self, tx: &mut PgConnection, _input: &ScanAnalyzed, out: &StoredReport) -> sqlx::Result<()> {
        out.insert(tx).await.map(|_| ())
    }

    fn encode(&self, out: &StoredReport) -> Result<Vec<u8>, contracts::ContractError> {
        contracts::encode(&out.event)
    }
}

/// Advisory-lock key that makes one process regenerate at a time.
const REGEN_LOCK: i64 = 0x676d_6d61_7265_6765; // "gmmarege"

/// One regeneration pass: the newest report of each case that was written by the fallback
/// because the LLM was unavailable is written again, when the LLM answers now. Returns how
/// many new versions were stored.
pub async fn regenerate_once(rt: &StageRuntime, reporter: &Reporter) -> anyhow::Result<usize> {
    let Some(llm) = &reporter.llm else { return Ok(0) };
    let mut lock = rt.db.acquire().await?;
    let (got,): (bool,) =
        sqlx::query_as("SELECT pg_try_advisory_lock($1)").bind(REGEN_LOCK).fetch_one(&mut *lock).await?;
    if !got {
        return Ok(0);
    }
    let result = regenerate_locked(rt, reporter, llm).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(REGEN_LOCK).execute(&mut *lock).await;
    result
}

async fn regenerate_locked(rt: &StageRuntime, reporter: &Reporter, llm: &Llm) -> anyhow::Result<usize> {
    let due: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT case_id, version FROM (
             SELECT DISTINCT ON (case_id) case_id, version, path, fallback_reason, created_at
             FROM reports ORDER BY case_id, version DESC) r
         WHERE path = 'fallback' AND fallback_reason = 'unavailable' ORDER BY created_at LIMIT $1",
    )
    .bind(reporter.config.regenerate_batch.max(1))
    .fetch_all(&rt.db)
    .await?;
    if due.is_empty() || llm.model_digest().await.is_err() {
        return Ok(0);
    }
    let mut stored = 0;
    for (case_id, version) in due {
        let StageState::Done { output } = db::stage_state(&rt.db, case_id, Stage::Infer).await? else { continue };
        let analysis: ScanAnalyzed = contracts::decode(&output)?;
        let g = reporter.generate(&analysis).await;
        if g.fallback_reason.as_deref() == Some("unavailable") {
            tracing::info!("the LLM is unavailable again; regeneration waits for the next pass");
            break;
        }
        let report = StoredReport::new(reporter, &analysis, version + 1, g);
        let mut tx = rt.db.begin().await?;
        if report.insert(&mut tx).await? {
            let payload = contracts::encode(&report.event)?;
            let msg_id = format!("{}:v{}", Event::ReportReady.msg_id(case_id), report.version);
            outbox::enqueue(&mut tx, &Event::ReportReady.subject(&report.tenant), &msg_id, &payload).await?;
            tx.commit().await?;
            rt.relay.kick();
            stored += 1;
            tracing::info!(case_id = %case_id, version = report.version, path = report.event.path, "report regenerated");
        }
    }
    Ok(stored)
}

fn spawn_regeneration(rt: StageRuntime, reporter: Arc<Reporter>, shutdown: Shutdown) {
    let every = reporter.config.regenerate_interval_s;
    if every == 0 || reporter.llm.is_none() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(every)) => {}
                _ = shutdown.wait() => break,
            }
            if let Err(e) = regenerate_once(&rt, &reporter).await {
                tracing::warn!(error = format!("{e:#}"), "regeneration pass failed; will try again");
            }
        }
    });
}

/// The newest report of a case, if any (JSON body).
pub async fn latest(db: &PgPool, case_id: Uuid) -> sqlx::Result<Option<Value>> {
    let row: Option<(Value,)> =
        sqlx::query_as("SELECT body FROM reports WHERE case_id = $1 ORDER BY version DESC LIMIT 1")
            .bind(case_id)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(v,)| v))
}

/// Runs the report service until SIGTERM.
pub async fn run(config: ReportConfig) -> anyhow::Result<()> {
    gmmas_runtime::telemetry::init("report", &config.common.log_format);
    let shutdown = Shutdown::on_signals();
    let mut reporter = Reporter::new(&config)?;
    let rt = StageRuntime::start(&config.common, "report", &shutdown).await?;
    reporter.metrics = Some(ReportMetrics::register(&rt.metrics.registry)?);
    tracing::info!(
        kb = %reporter.kb.version,
        llm = reporter.llm.as_ref().map(|l| l.backend.as_str()).unwrap_or("none"),
        model = reporter.llm.as_ref().map(|l| l.model.as_str()).unwrap_or(""),
        embeddings = reporter.embedder.is_some(),
        "report service starting"
    );
    let reporter = Arc::new(reporter);
    spawn_regeneration(rt.clone(), reporter.clone(), shutdown.clone());
    gmmas_runtime::http::serve(&config.common.http_addr, rt.health_routes(), shutdown.clone()).await?;
    worker::run(rt, Arc::new(ReportStage { reporter }), shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::tests::analysis;

    #[test]
    fn settings_come_from_the_environment() {
        let env = vec![
            ("GMMAS_LLM_BACKEND".to_string(), "openai".to_string()),
            ("GMMAS_LLM_ATTEMPTS".to_string(), "3".to_string()),
            ("GMMAS_EMBED_URL".to_string(), "http://127.0.0.1:1".to_string()),
        ];
        let c: ReportConfig = gmmas_runtime::config::load_from(None, &env).unwrap();
        assert_eq!((c.llm_backend.as_str(), c.llm_attempts), ("openai", 3));
        assert_eq!(c.llm_temperature, 0.0);
        assert!(Reporter::new(&ReportConfig { llm_backend: "gpt".into(), ..Default::default() }).is_err());
    }

    /// With nothing listening, the report comes from the fallback, says why, and validates.
    #[tokio::test]
    async fn unreachable_llm_gives_a_valid_fallback() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = ReportConfig {
            llm_url: format!("http://127.0.0.1:{port}"),
            embed_url: format!("http://127.0.0.1:{port}"),
            llm_timeout_s: 2.0,
            ..Default::default()
        };
        let r = Reporter::new(&config).unwrap();
        let g = r.generate(&analysis([0.8, 0.3, 0.2, 0.5], [0.3, 0.4, 0.3], &[])).await;
        assert_eq!(g.path, ReportPath::Fallback);
        assert_eq!(g.fallback_reason.as_deref(), Some("unavailable"));
        assert_eq!(g.retrieval, "bm25 (embeddings unavailable)");
        assert!(g.findings.is_empty(), "{:?}", g.findings);
        let none = Reporter::new(&ReportConfig { llm_backend: "none".into(), ..Default::default() }).unwrap();
        let g = none.generate(&analysis([0.8, 0.3, 0.2, 0.5], [0.3, 0.4, 0.3], &[])).await;
        assert_eq!(g.fallback_reason.as_deref(), Some("disabled"));
    }
}
