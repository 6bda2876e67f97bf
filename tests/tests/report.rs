//! The report service end to end against a real local LLM (SmolLM2-135M in llama.cpp's
//! llama-server, through the Ollama API bridge or the OpenAI-compatible API): a phantom case's
//! report is stored, validated and served; a wrong number from the LLM is rejected and the
//! fallback used; with the LLM down the fallback is stored, and regenerated once it is back.
//! Assertions are about structure, grounding and fallback, never about medical wording.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::time::{Duration, Instant};

use gmmas_e2e::llm::{self, Proc};
use gmmas_e2e::{System, phantom_files};
use serde_json::Value;

const TENANT: &str = "hospital-a";
const DIMS: [usize; 3] = [48, 48, 40];
const SERVICES: [&str; 5] = ["ingest", "preprocess", "infer", "api", "report"];

/// One LLM test at a time: three model servers on two cores would only slow each other down.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn logs() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

async fn analyzed_case(sys: &System, seed: u64) -> String {
    let (_, files) = phantom_files(seed, DIMS);
    let (status, body) = sys.upload(TENANT, &format!("report-{seed}"), files).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let id = body["case_id"].as_str().unwrap().to_string();
    let view = sys.wait_case(TENANT, &id, Duration::from_secs(180)).await.unwrap();
    assert_eq!(view["status"], "done", "{view}");
    id
}

/// Waits until the case has a report of at least `version`, and returns it.
async fn wait_report(sys: &System, case_id: &str, version: i64, timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        let (status, v) = sys.get_json(&format!("/api/v1/tenants/{TENANT}/cases/{case_id}/report")).await.unwrap();
        if status == 200 && v["version"].as_i64().unwrap_or(0) >= version {
            return v;
        }
        assert!(status == 200 || status == 404, "{status} {v}");
        if start.elapsed() > timeout {
            panic!("{}", sys.with_logs(anyhow::anyhow!("no report v{version} for {case_id} after {timeout:?}: {v}")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Structure and grounding every stored report has, whichever path wrote it.
fn assert_well_formed(r: &Value) {
    let kb = gmmas_report::kb::KnowledgeBase::load("").unwrap();
    assert_eq!(r["validation"]["passed"], true, "{r:#}");
    assert_eq!(r["kb_version"], kb.version.as_str());
    assert_eq!(r["disclaimer"], gmmas_report::report::DISCLAIMER);
    assert!(!r["summary"].as_str().unwrap().is_empty());
    for row in ["tumor_compartments", "histological_subtype", "molecular_information"] {
        for col in ["prognostic_assessment", "diagnostic_opinion"] {
            let cell = &r["chart"][row][col];
            assert!(!cell["text"].as_str().unwrap().trim().is_empty(), "{row}/{col}: {cell}");
            let cites = cell["cites"].as_array().unwrap();
            assert!(!cites.is_empty(), "{row}/{col} cites nothing");
            for c in cites {
                assert!(kb.get(c.as_str().unwrap()).is_some(), "{row}/{col} cites unknown {c}");
            }
        }
    }
    assert!(!r["treatment"]["cites"].as_array().unwrap().is_empty());
    for s in r["sources"].as_array().unwrap() {
        assert!(kb.get(s["id"].as_str().unwrap()).is_some());
    }
    // The stated proportions are the analysis's.
    let facts = &r["facts"];
    let sum = facts["ncr_fraction"].as_f64().unwrap()
        + facts["ed_fraction"].as_f64().unwrap()
        + facts["et_fraction"].as_f64().unwrap();
    assert!(sum == 0.0 || (sum - 1.0).abs() < 1e-6, "fractions sum to {sum}");
}

fn digest_ok(d: &Value) -> bool {
    d.as_str().is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test]
async fn phantom_case_report_through_ollama_is_validated_and_served() {
    let _serial = SERIAL.lock().await;
    let dir = logs();
    let stack = llm::Stack::start(dir.path()).await.unwrap();
    let env = stack.report_env(300, 60);
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut sys = System::start_with(&refs, &SERVICES).await.unwrap();
    let case = analyzed_case(&sys, 11).await;
    let r = wait_report(&sys, &case, 1, Duration::from_secs(600)).await;
    assert_well_formed(&r);

    // The LLM was asked, through ollama-rs, and the stored report says by which model and prompt.
    assert_eq!(r["llm"]["backend"], "ollama");
    assert_eq!(r["llm"]["model"], llm::CHAT_MODEL);
    assert_eq!(r["llm"]["digest"].as_str().unwrap(), llm::chat_digest().unwrap());
    assert!(digest_ok(&r["prompt_sha256"]), "{}", r["prompt_sha256"]);
    let attempts = r["llm"]["attempts"].as_array().unwrap();
    assert!(!attempts.is_empty());
    for a in attempts {
        assert!(matches!(a["outcome"].as_str(), Some("valid" | "invalid")), "the LLM answered: {a}");
        assert!(a["completion_tokens"].as_u64().unwrap() > 0, "{a}");
    }
    match r["path"].as_str().unwrap() {
        "llm" => assert_eq!(attempts.last().unwrap()["outcome"], "valid"),
        "fallback" => {
            // Every answer was rejected for stated reasons, and the fallback stands in.
            assert_eq!(r["fallback_reason"], "invalid", "{r:#}");
            assert!(attempts.iter().all(|a| !a["errors"].as_array().unwrap().is_empty()));
        }
        other => panic!("path {other}"),
    }
    let method = r["retrieval"]["method"].as_str().unwrap();
    if stack.embed.is_some() {
        assert_eq!(method, format!("embedding:{}", llm::EMBED_MODEL));
    } else {
        assert_eq!(method, "bm25");
    }

    // The same report as a page in the chart layout.
    let resp = sys
        .request(reqwest::Method::GET, &format!("/api/v1/tenants/{TENANT}/cases/{case}/report.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = resp.text().await.unwrap();
    let sections = gmmas_report::report::CHART_ROWS.into_iter().chain(gmmas_report::report::CHART_COLUMNS);
    for needle in sections.chain([gmmas_report::report::DISCLAIMER]) {
        assert!(page.contains(needle), "page lacks {needle}");
    }
    // Another tenant cannot read it; a case without a report is a 404.
    let (status, _) = sys.get_json(&format!("/api/v1/tenants/hospital-b/cases/{case}/report")).await.unwrap();
    assert_eq!(status, 404);

    // report.ready was published once, with the stored path; metrics count it.
    let msgs = sys.stream_messages(&format!("gmmas.{TENANT}.report.ready")).await.unwrap();
    assert_eq!(msgs.len(), 1);
    let ev: gmmas_contracts::ReportReady = gmmas_contracts::decode(&msgs[0]).unwrap();
    assert_eq!((ev.case_id.to_string(), ev.path.as_str(), ev.version), (case.clone(), r["path"].as_str().unwrap(), 1));
    let metrics = sys.metrics("report").await.unwrap();
    assert!(metrics.contains("gmmas_reports_total"), "{metrics}");
    // No prompt text or analysis numbers in the service log.
    let log = std::fs::read_to_string(&sys.service("report").log).unwrap();
    assert!(!log.contains("FACTS") && !log.contains("PASSAGES"), "the prompt was logged");
    sys.shutdown().await;
    stack.stop().await;
}

#[tokio::test]
async fn wrong_number_from_the_llm_is_rejected_and_the_fallback_used() {
    let _serial = SERIAL.lock().await;
    let dir = logs();
    let chat = llm::start_chat(None, &dir.path().join("chat.log")).await.unwrap();
    // The real model answers; the bridge adds a volume no analysis has to every answer.
    let bridge = llm::start_bridge(&chat, None, Some("wrong-number"), &dir.path().join("bridge.log")).await.unwrap();
    let env = [
        ("GMMAS_LLM_BACKEND", "ollama"),
        ("GMMAS_LLM_URL", bridge.url.as_str()),
        ("GMMAS_LLM_MODEL", llm::CHAT_MODEL),
        ("GMMAS_LLM_TIMEOUT_S", "300"),
        ("GMMAS_LLM_ATTEMPTS", "2"),
    ];
    let sys = System::start_with(&env, &SERVICES).await.unwrap();
    let case = analyzed_case(&sys, 12).await;
    let r = wait_report(&sys, &case, 1, Duration::from_secs(600)).await;
    assert_well_formed(&r);
    assert_eq!(r["path"], "fallback", "{r:#}");
    assert_eq!(r["fallback_reason"], "invalid");
    let attempts = r["llm"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "one retry: {attempts:?}");
    for a in attempts {
        assert_eq!(a["outcome"], "invalid");
        let errors: Vec<&str> = a["errors"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(errors.iter().any(|e| e.contains("4321.9")), "the wrong number is named: {errors:?}");
    }
    assert!(!r.to_string().contains("measures 4321.9"), "the wrong text was not stored as the report");
    sys.shutdown().await;
    bridge.stop().await;
    chat.stop().await;
}

#[tokio::test]
async fn llm_down_gives_the_fallback_then_the_llm_regenerates_it() {
    let _serial = SERIAL.lock().await;
    let dir = logs();
    // Nothing listens on the LLM's port yet.
    let port = gmmas_runtime::supervise::free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let env = [
        ("GMMAS_LLM_BACKEND", "openai"),
        ("GMMAS_LLM_URL", url.as_str()),
        ("GMMAS_LLM_MODEL", llm::CHAT_MODEL),
        ("GMMAS_LLM_TIMEOUT_S", "300"),
        ("GMMAS_REGENERATE_INTERVAL_S", "1"),
    ];
    let sys = System::start_with(&env, &SERVICES).await.unwrap();
    let case = analyzed_case(&sys, 13).await;
    let v1 = wait_report(&sys, &case, 1, Duration::from_secs(120)).await;
    assert_well_formed(&v1);
    assert_eq!(
        (v1["path"].as_str(), v1["fallback_reason"].as_str()),
        (Some("fallback"), Some("unavailable")),
        "{v1:#}"
    );
    assert_eq!(v1["llm"]["attempts"][0]["outcome"], "unavailable");
    // The case is done and the report stage finished: nothing is stuck.
    let (_, view) = sys.get_json(&format!("/api/v1/tenants/{TENANT}/cases/{case}")).await.unwrap();
    assert_eq!(view["status"], "done");
    let report_stage = view["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "report").cloned().unwrap();
    assert_eq!(report_stage["status"], "done", "{report_stage}");

    // The LLM comes back: the report is written again through it, as version 2.
    let chat: Proc = llm::start_chat(Some(port), &dir.path().join("chat.log")).await.unwrap();
    let v2 = wait_report(&sys, &case, 2, Duration::from_secs(600)).await;
    assert_well_formed(&v2);
    assert_eq!(v2["llm"]["backend"], "openai");
    let attempts = v2["llm"]["attempts"].as_array().unwrap();
    assert!(attempts.iter().all(|a| matches!(a["outcome"].as_str(), Some("valid" | "invalid"))), "{attempts:?}");
    assert!(v2["llm"]["digest"].as_str().unwrap_or_default().starts_with("meta-sha256:"), "{}", v2["llm"]);
    assert_ne!(v2["fallback_reason"], "unavailable");
    // Version 1 stays readable; two report.ready events, one per version.
    let (status, old) = sys.get_json(&format!("/api/v1/tenants/{TENANT}/cases/{case}/report?version=1")).await.unwrap();
    assert_eq!((status, old["path"].as_str()), (200, Some("fallback")));
    let msgs = sys.stream_messages(&format!("gmmas.{TENANT}.report.ready")).await.unwrap();
    let versions: Vec<u32> =
        msgs.iter().map(|m| gmmas_contracts::decode::<gmmas_contracts::ReportReady>(m).unwrap().version).collect();
    assert_eq!(versions, vec![1, 2]);
    // A pass with nothing to do stores nothing more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM reports WHERE case_id = $1::uuid")
        .bind(&case)
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert_eq!(n, 2);
    sys.shutdown().await;
    chat.stop().await;
}
