//! Access to a local LLM: the Ollama API through `ollama-rs`, or an OpenAI-compatible server
//! (llama.cpp's llama-server, vLLM). JSON-schema-constrained chat, embeddings, the model digest;
//! every call under a timeout and a concurrency limit. Prompts are never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ollama_rs::Ollama;
use ollama_rs::generation::chat::ChatMessage;
use ollama_rs::generation::chat::request::ChatMessageRequest;
use ollama_rs::generation::embeddings::request::{EmbeddingsInput, GenerateEmbeddingsRequest};
use ollama_rs::generation::parameters::{FormatType, JsonStructure};
use ollama_rs::models::ModelOptions;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// Which API a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Ollama,
    OpenAi,
}

impl Backend {
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "ollama" => Some(Backend::Ollama),
            "openai" => Some(Backend::OpenAi),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Ollama => "ollama",
            Backend::OpenAi => "openai",
        }
    }
}

/// Why an LLM call gave nothing usable. `Unavailable` (down, slow, HTTP error) is worth trying
/// again later; `Invalid` (not the JSON asked for) is the model's answer.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("the LLM server is unavailable: {0}")]
    Unavailable(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the answer is not the report JSON: {0}")]
    Invalid(String),
}

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenOptions {
    pub temperature: f32,
    pub seed: i32,
    pub max_tokens: i32,
    pub num_ctx: u64,
}

/// One structured-output chat call: the system and user messages, the JSON schema the answer
/// must follow, and the generation settings.
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    pub system: &'a str,
    pub user: &'a str,
    pub schema: &'a Value,
    pub opts: &'a GenOptions,
}

/// An LLM endpoint with a model, a timeout per call and a concurrency limit.
#[derive(Clone)]
pub struct Llm {
    pub backend: Backend,
    pub model: String,
    base: String,
    http: reqwest::Client,
    ollama: Option<Ollama>,
    timeout: Duration,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llm").field("backend", &self.backend).field("model", &self.model).finish_non_exhaustive()
    }
}

/// The usage numbers of one chat call.
#[derive(Debug, Clone, Default)]
pub struct ChatStats {
    pub ms: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Llm {
    /// A client for `url` (e.g. `http://127.0.0.1:11434`); `max_concurrency` calls at once.
    pub fn new(
        backend: Backend,
        url: &str,
        model: &str,
        timeout: Duration,
        max_concurrency: usize,
    ) -> anyhow::Result<Llm> {
        let base = url.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder().timeout(timeout).build()?;
        let ollama = match backend {
            Backend::Ollama => {
                let url = reqwest::Url::parse(&base)?;
                let host = format!("{}://{}", url.scheme(), url.host_str().unwrap_or("127.0.0.1"));
                let port = url.port_or_known_default().unwrap_or(11434);
                Some(Ollama::builder().host(host).port(port).reqwest_client(http.clone()).build())
            }
            Backend::OpenAi => None,
        };
        Ok(Llm {
            backend,
            model: model.to_string(),
            base,
            http,
            ollama,
            timeout,
            permits: Arc::new(Semaphore::new(max_concurrency.max(1))),
        })
    }

    /// Asks for a JSON answer that follows `schema`; returns the raw content.
    pub async fn chat_json(&self, req: ChatRequest<'_>) -> Result<(String, ChatStats), LlmError> {
        let _permit = self.permits.acquire().await.map_err(|e| LlmError::Unavailable(e.to_string()))?;
        let started = Instant::now();
        let call = async {
            match self.backend {
                Backend::Ollama => self.chat_ollama(req).await,
                Backend::OpenAi => self.chat_openai(req).await,
            }
        };
        let (content, mut stats) =
            tokio::time::timeout(self.timeout, call).await.map_err(|_| LlmError::Timeout(self.timeout))??;
        stats.ms = started.elapsed().as_millis() as u64;
        Ok((content, stats))
    }

    #[allow(
        clippy::expect_used,
        clippy::unwrap_used,
        reason = "this branch runs only with the ollama backend configured"
    )]
    async fn chat_ollama(&self, req: ChatRequest<'_>) -> Result<(String, ChatStats), LlmError> {
        let ChatRequest { system, user, schema, opts } = req;
        let ollama = self.ollama.as_ref().expect("ollama backend");
        let schema = schemars::Schema::try_from(schema.clone()).map_err(|e| LlmError::Invalid(e.to_string()))?;
        let req = ChatMessageRequest::new(
            self.model.clone(),
            vec![ChatMessage::system(system.to_string()), ChatMessage::user(user.to_string())],
        )
        .format(FormatType::StructuredJson(Box::new(JsonStructure::new_for_schema(schema))))
        .options(
            ModelOptions::default()
                .temperature(opts.temperature)
                .seed(opts.seed)
                .num_predict(opts.max_tokens)
                .num_ctx(opts.num_ctx),
        );
        let res = ollama.send_chat_messages(req).await.map_err(ollama_error)?;
        let stats = res
            .final_data
            .map(|d| ChatStats { ms: 0, prompt_tokens: d.prompt_eval_count, completion_tokens: d.eval_count })
            .unwrap_or_default();
        Ok((res.message.content, stats))
    }

    async fn chat_openai(&self, req: ChatRequest<'_>) -> Result<(String, ChatStats), LlmError> {
        let ChatRequest { system, user, schema, opts } = req;
        let body = json!({
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": opts.temperature,
            "seed": opts.seed,
            "max_tokens": opts.max_tokens,
            "stream": false,
            "response_format": {"type": "json_schema", "json_schema": {"name": "report", "strict": true, "schema": schema}},
        });
        let v = self.post_json("/v1/chat/completions", &body).await?;
        let content = v["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| LlmError::Invalid("no choices[0].message.content".into()))?
            .to_string();
        let stats = ChatStats {
            ms: 0,
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        };
        Ok((content, stats))
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<Value, LlmError> {
        let res = self.http.post(format!("{}{path}", self.base)).json(body).send().await.map_err(http_error)?;
        let status = res.status();
        if !status.is_success() {
            let text = res.text().await.unwrap_or_default();
            return Err(LlmError::Unavailable(format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            )));
        }
        res.json().await.map_err(|e| LlmError::Invalid(e.to_string()))
    }

    /// Embeddings of `texts`, one vector each.
    #[allow(
        clippy::expect_used,
        clippy::unwrap_used,
        reason = "this branch runs only with the ollama backend configured"
    )]
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, LlmError> {
        let _permit = self.permits.acquire().await.map_err(|e| LlmError::Unavailable(e.to_string()))?;
        let call = async {
            match self.backend {
                Backend::Ollama => {
                    let ollama = self.ollama.as_ref().expect("ollama backend");
                    let req =
                        GenerateEmbeddingsRequest::new(self.model.clone(), EmbeddingsInput::Multiple(texts.to_vec()));
                    Ok(ollama.generate_embeddings(req).await.map_err(ollama_error)?.embeddings)
                }
                Backend::OpenAi => {
                    let v = self.post_json("/v1/embeddings", &json!({"model": self.model, "input": texts})).await?;
                    let data =
                        v["data"].as_array().ok_or_else(|| LlmError::Invalid("no data[] in the answer".into()))?;
                    data.iter()
                        .map(|d| {
                            d["embedding"]
                                .as_array()
                                .map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect())
                                .ok_or_else(|| LlmError::Invalid("no embedding in data[]".into()))
                        })
                        .collect()
                }
            }
        };
        let out: Vec<Vec<f32>> =
            tokio::time::timeout(self.timeout, call).await.map_err(|_| LlmError::Timeout(self.timeout))??;
        if out.len() != texts.len() || out.iter().any(Vec::is_empty) {
            return Err(LlmError::Invalid(format!("{} embeddings for {} texts", out.len(), texts.len())));
        }
        Ok(out)
    }

    /// The model's digest as the server reports it: Ollama's `/api/tags` digest; for an
    /// OpenAI-compatible server, `meta-sha256:` and the hash of its `/v1/models` metadata.
    /// Also the health check: an error means the server or the model is not there.
    pub async fn model_digest(&self) -> Result<Option<String>, LlmError> {
        let path = match self.backend {
            Backend::Ollama => "/api/tags",
            Backend::OpenAi => "/v1/models",
        };
        let res = self.http.get(format!("{}{path}", self.base)).send().await.map_err(http_error)?;
        if !res.status().is_success() {
            return Err(LlmError::Unavailable(format!("HTTP {} from {path}", res.status())));
        }
        let v: Value = res.json().await.map_err(|e| LlmError::Invalid(e.to_string()))?;
        let list = match self.backend {
            Backend::Ollama => v["models"].as_array().cloned().unwrap_or_default(),
            Backend::OpenAi => v["data"].as_array().cloned().unwrap_or_default(),
        };
        let entry = list
            .iter()
            .find(|m| [&m["name"], &m["model"], &m["id"]].iter().any(|n| n.as_str() == Some(self.model.as_str())));
        let Some(entry) = entry else {
            return Err(LlmError::Unavailable(format!("the server does not serve the model {:?}", self.model)));
        };
        Ok(match self.backend {
            Backend::Ollama => entry["digest"].as_str().map(|d| d.trim_start_matches("sha256:").to_string()),
            // No file digest over this API: a fingerprint of what the server says of the model
            // (parameters, vocabulary, size), which changes when the model file does.
            Backend::OpenAi => entry.get("meta").filter(|m| m.is_object()).map(|m| {
                use sha2::Digest;
                format!("meta-sha256:{}", hex::encode(sha2::Sha256::digest(m.to_string().as_bytes())))
            }),
        })
    }
}

fn http_error(e: reqwest::Error) -> LlmError {
    if e.is_timeout() { LlmError::Timeout(Duration::ZERO) } else { LlmError::Unavailable(without_url(&e)) }
}

/// The error without the URL (it may carry credentials in a query string).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connection refused or unreachable"
    } else if e.is_request() {
        "request failed"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "HTTP error"
    };
    kind.to_string()
}

fn ollama_error(e: ollama_rs::error::OllamaError) -> LlmError {
    use ollama_rs::error::OllamaError;
    match e {
        OllamaError::ReqwestError(e) => http_error(e),
        OllamaError::JsonError(e) => LlmError::Invalid(e.to_string()),
        other => LlmError::Unavailable(other.to_string().chars().take(200).collect()),
    }
}
