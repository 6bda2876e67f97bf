//! Serves the Ollama API (chat, generate, embed, tags, show, version) in front of an
//! OpenAI-compatible server such as llama.cpp's llama-server, so Ollama clients run against it.
//!
//! Tests use it to drive `ollama-rs` against a real local model. `--fault wrong-number` puts a
//! number that no analysis contains into every chat answer (fault injection for validation tests).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[derive(Parser, Debug, Clone)]
#[command(about = "Ollama API in front of an OpenAI-compatible server")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:11434")]
    listen: String,
    /// Base URL of the OpenAI-compatible chat server.
    #[arg(long)]
    upstream: String,
    /// Model name the chat server is served under.
    #[arg(long, default_value = "smollm2:135m")]
    model: String,
    /// The chat model's file, hashed for the digest `/api/tags` reports.
    #[arg(long)]
    model_file: Option<String>,
    /// Base URL of the embedding server (OpenAI-compatible), if any.
    #[arg(long)]
    embed_upstream: Option<String>,
    #[arg(long, default_value = "all-minilm")]
    embed_model: String,
    #[arg(long)]
    embed_model_file: Option<String>,
    /// `wrong-number`: append a number no analysis has to every chat answer.
    #[arg(long)]
    fault: Option<String>,
}

struct Bridge {
    args: Args,
    http: reqwest::Client,
    digest: String,
    embed_digest: String,
}

type Shared = Arc<Bridge>;

fn file_digest(path: &Option<String>, fallback: &str) -> anyhow::Result<String> {
    match path {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {p}"))?;
            Ok(hex::encode(Sha256::digest(&bytes)))
        }
        None => Ok(hex::encode(Sha256::digest(fallback.as_bytes()))),
    }
}

fn err(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": msg.to_string()}))).into_response()
}

async fn upstream(b: &Bridge, base: &str, path: &str, body: &Value) -> Result<Value, Response> {
    let res = b
        .http
        .post(format!("{}{path}", base.trim_end_matches('/')))
        .json(body)
        .send()
        .await
        .map_err(|e| err(StatusCode::BAD_GATEWAY, format!("upstream: {e}")))?;
    let status = res.status();
    let v: Value = res.json().await.map_err(|e| err(StatusCode::BAD_GATEWAY, format!("upstream body: {e}")))?;
    if !status.is_success() {
        return Err(err(StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY), v));
    }
    Ok(v)
}

/// Ollama options and format as OpenAI request fields.
fn openai_request(b: &Bridge, messages: Value, req: &Value) -> Value {
    let o = &req["options"];
    let mut body = json!({"model": b.args.model, "messages": messages, "stream": false});
    for (from, to) in [
        ("temperature", "temperature"),
        ("seed", "seed"),
        ("num_predict", "max_tokens"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("stop", "stop"),
    ] {
        if !o[from].is_null() {
            body[to] = o[from].clone();
        }
    }
    match &req["format"] {
        Value::String(s) if s == "json" => body["response_format"] = json!({"type": "json_object"}),
        Value::Object(_) => {
            body["response_format"] =
                json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": req["format"]}})
        }
        _ => {}
    }
    body
}

fn inject(fault: &Option<String>, content: String) -> String {
    if fault.as_deref() != Some("wrong-number") {
        return content;
    }
    const WRONG: &str = " The whole tumour measures 4321.9 mL.";
    match serde_json::from_str::<Value>(&content) {
        Ok(mut v) if v["summary"].is_string() => {
            let s = format!("{}{WRONG}", v["summary"].as_str().unwrap_or_default());
            v["summary"] = Value::String(s);
            v.to_string()
        }
        _ => format!("{content}{WRONG}"),
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

/// A complete answer as one NDJSON stream (a content chunk, then the final chunk) or one object.
fn answer(stream: bool, chunk: Value, done: Value) -> Response {
    if stream {
        let text = format!("{chunk}\n{done}\n");
        Response::builder()
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(Body::from(text))
            .unwrap_or_else(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e))
    } else {
        let mut merged = done;
        if let (Some(m), Some(c)) = (merged.as_object_mut(), chunk.as_object()) {
            for (k, v) in c {
                if k != "done" {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        Json(merged).into_response()
    }
}

fn final_fields(v: &Value, started: Instant) -> Value {
    let ns = started.elapsed().as_nanos() as u64;
    json!({
        "done": true,
        "done_reason": "stop",
        "total_duration": ns,
        "load_duration": 0,
        "prompt_eval_count": v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
        "prompt_eval_duration": 0,
        "eval_count": v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        "eval_duration": ns,
    })
}

async fn chat(State(b): State<Shared>, Json(req): Json<Value>) -> Response {
    let started = Instant::now();
    let messages: Vec<Value> = req["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|m| json!({"role": m["role"], "content": m["content"]}))
        .collect();
    let (v, content) = match complete(&b, messages, &req).await {
        Ok(answer) => answer,
        Err(r) => return r,
    };
    let stream = req["stream"].as_bool().unwrap_or(true);
    let head = json!({"model": b.args.model, "created_at": now()});
    let mut chunk = head.clone();
    chunk["message"] = json!({"role": "assistant", "content": content});
    chunk["done"] = json!(false);
    let mut done = final_fields(&v, started);
    done["model"] = head["model"].clone();
    done["created_at"] = head["created_at"].clone();
    done["message"] = json!({"role": "assistant", "content": ""});
    answer(stream, chunk, done)
}

/// Sends `messages` upstream as one chat completion; returns the upstream answer and its text
/// (with the configured fault injected), or the error response to give the caller.
async fn complete(b: &Shared, messages: Vec<Value>, req: &Value) -> Result<(Value, String), Response> {
    let body = openai_request(b, Value::Array(messages), req);
    let v = upstream(b, &b.args.upstream, "/v1/chat/completions", &body).await?;
    let content = inject(&b.args.fault, v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string());
    Ok((v, content))
}

async fn generate(State(b): State<Shared>, Json(req): Json<Value>) -> Response {
    let started = Instant::now();
    let mut messages = Vec::new();
    if let Some(s) = req["system"].as_str() {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": req["prompt"].as_str().unwrap_or_default()}));
    let (v, content) = match complete(&b, messages, &req).await {
        Ok(answer) => answer,
        Err(r) => return r,
    };
    let stream = req["stream"].as_bool().unwrap_or(true);
    let chunk = json!({"model": b.args.model, "created_at": now(), "response": content, "done": false});
    let mut done = final_fields(&v, started);
    done["model"] = json!(b.args.model);
    done["created_at"] = json!(now());
    done["response"] = json!("");
    done["context"] = json!([]);
    answer(stream, chunk, done)
}

async fn embed_vectors(b: &Bridge, input: Value) -> Result<Vec<Value>, Response> {
    let Some(base) = &b.args.embed_upstream else {
        return Err(err(StatusCode::NOT_FOUND, "no embedding model is served"));
    };
    let v = upstream(b, base, "/v1/embeddings", &json!({"model": b.args.embed_model, "input": input})).await?;
    Ok(v["data"].as_array().cloned().unwrap_or_default().into_iter().map(|d| d["embedding"].clone()).collect())
}

async fn embed(State(b): State<Shared>, Json(req): Json<Value>) -> Response {
    let input = match &req["input"] {
        Value::String(s) => json!([s]),
        other => other.clone(),
    };
    match embed_vectors(&b, input).await {
        Ok(vs) => Json(json!({"model": b.args.embed_model, "embeddings": vs})).into_response(),
        Err(r) => r,
    }
}

async fn embeddings_legacy(State(b): State<Shared>, Json(req): Json<Value>) -> Response {
    match embed_vectors(&b, json!([req["prompt"]])).await {
        Ok(vs) => Json(json!({"embedding": vs.into_iter().next().unwrap_or(Value::Null)})).into_response(),
        Err(r) => r,
    }
}

fn model_entry(name: &str, digest: &str) -> Value {
    json!({
        "name": name, "model": name, "modified_at": now(), "size": 0, "digest": digest,
        "details": {"format": "gguf", "family": "", "parameter_size": "", "quantization_level": ""}
    })
}

async fn tags(State(b): State<Shared>) -> Response {
    let mut models = vec![model_entry(&b.args.model, &b.digest)];
    if b.args.embed_upstream.is_some() {
        models.push(model_entry(&b.args.embed_model, &b.embed_digest));
    }
    Json(json!({"models": models})).into_response()
}

async fn show(State(b): State<Shared>, Json(req): Json<Value>) -> Response {
    let name = req["model"].as_str().or(req["name"].as_str()).unwrap_or_default();
    let embed = name == b.args.embed_model && b.args.embed_upstream.is_some();
    if name != b.args.model && !embed {
        return err(StatusCode::NOT_FOUND, format!("model '{name}' not found"));
    }
    Json(json!({
        "license": "", "modelfile": "", "parameters": "", "template": "",
        "details": {"format": "gguf"}, "model_info": {},
        "capabilities": [if embed { "embedding" } else { "completion" }],
    }))
    .into_response()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let digest = file_digest(&args.model_file, &args.model)?;
    let embed_digest = file_digest(&args.embed_model_file, &args.embed_model)?;
    let bridge = Arc::new(Bridge { http: reqwest::Client::new(), args: args.clone(), digest, embed_digest });
    let app = Router::new()
        .route("/", get(|| async { "Ollama is running" }))
        .route("/api/version", get(|| async { Json(json!({"version": "0.5.0"})) }))
        .route("/api/tags", get(tags))
        .route("/api/show", post(show))
        .route("/api/chat", post(chat))
        .route("/api/generate", post(generate))
        .route("/api/embed", post(embed))
        .route("/api/embeddings", post(embeddings_legacy))
        .with_state(bridge);
    let listener =
        tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    eprintln!("ollama bridge on http://{} -> {}", listener.local_addr()?, args.upstream);
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fault_goes_into_the_summary_and_nothing_else_changes() {
        let fault = Some("wrong-number".to_string());
        let answer = json!({"summary": "NCR 20.0%.", "disclaimer": "d"}).to_string();
        let v: Value = serde_json::from_str(&inject(&fault, answer.clone())).unwrap();
        assert_eq!(v["summary"], "NCR 20.0%. The whole tumour measures 4321.9 mL.");
        assert_eq!(v["disclaimer"], "d");
        assert_eq!(inject(&None, answer.clone()), answer);
    }
}
