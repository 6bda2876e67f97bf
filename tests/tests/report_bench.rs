//! The report measurements for the README: over N phantom cases (default 20) analyzed by the
//! running system, the time per report through the LLM (SmolLM2-135M via the Ollama bridge) and
//! through the fallback, and the share of LLM answers that pass validation. Writes
//! `services/report/results/bench.json` and `bench.md`. Run with `scripts/report-bench.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::time::{Duration, Instant};

use gmmas_e2e::llm;
use gmmas_e2e::{System, phantom_files};
use serde_json::{Value, json};

const TENANT: &str = "bench";
const DIMS: [usize; 3] = [48, 48, 40];

fn stats(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return json!(null);
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    json!({"n": v.len(), "mean": v.iter().sum::<f64>() / v.len() as f64, "median": q(0.5), "p90": q(0.9), "min": v[0], "max": v[v.len() - 1]})
}

#[tokio::test]
#[ignore = "measurement: about 20-40 minutes on 2 cores; run scripts/report-bench.sh"]
async fn report_bench() {
    let n: u64 = std::env::var("GMMAS_REPORT_BENCH_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let out_dir = std::env::var("GMMAS_REPORT_BENCH_OUT")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../services/report/results").to_string());
    let dir = tempfile::tempdir().unwrap();
    let stack = llm::Stack::start(dir.path()).await.unwrap();
    let env = stack.report_env(600, 120);
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sys = System::start_with(&refs, &["ingest", "preprocess", "infer", "api", "report"]).await.unwrap();
    let started = Instant::now();
    let mut cases = Vec::new();
    for seed in 0..n {
        let (_, files) = phantom_files(1000 + seed, DIMS);
        let (status, body) = sys.upload(TENANT, &format!("bench-{seed}"), files).await.unwrap();
        assert_eq!(status, 201, "{body}");
        cases.push(body["case_id"].as_str().unwrap().to_string());
    }
    let mut reports = Vec::new();
    for case in &cases {
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            let (status, v) = sys.get_json(&format!("/api/v1/tenants/{TENANT}/cases/{case}/report")).await.unwrap();
            if status == 200 {
                reports.push(v);
                break;
            }
            assert!(Instant::now() < deadline, "{}", sys.with_logs(anyhow::anyhow!("no report for {case}")));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let wall_s = started.elapsed().as_secs_f64();

    // The fallback, in-process, over the same analyses (retrieval, rules, validation, HTML).
    let fallback =
        gmmas_report::Reporter::new(&gmmas_report::ReportConfig { llm_backend: "none".into(), ..Default::default() })
            .unwrap();
    let mut fallback_ms = Vec::new();
    for case in &cases {
        let (out,): (Vec<u8>,) =
            sqlx::query_as("SELECT output FROM stage_runs WHERE case_id = $1::uuid AND stage = 'infer'")
                .bind(case)
                .fetch_one(&sys.db)
                .await
                .unwrap();
        let analysis: gmmas_contracts::ScanAnalyzed = gmmas_contracts::decode(&out).unwrap();
        let t = Instant::now();
        let g = fallback.generate(&analysis).await;
        assert!(g.findings.is_empty(), "{:?}", g.findings);
        let stored = gmmas_report::StoredReport::new(&fallback, &analysis, 1, g);
        assert!(!stored.html.is_empty());
        fallback_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    let attempts: Vec<&Value> = reports.iter().flat_map(|r| r["llm"]["attempts"].as_array().unwrap().iter()).collect();
    let answered: Vec<&&Value> =
        attempts.iter().filter(|a| matches!(a["outcome"].as_str(), Some("valid" | "invalid"))).collect();
    let first_valid = reports.iter().filter(|r| r["llm"]["attempts"][0]["outcome"] == "valid").count();
    let llm_path = reports.iter().filter(|r| r["path"] == "llm").count();
    let stored_valid = reports.iter().filter(|r| r["validation"]["passed"] == true).count();
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for a in &answered {
        for e in a["errors"].as_array().unwrap() {
            let e = e.as_str().unwrap_or_default();
            let kind = if e.contains("neither in the analysis") {
                "a number not in the analysis"
            } else if e.contains("calls the case") {
                "a class the probabilities do not favour"
            } else if e.contains("certainty") {
                "a certainty claim"
            } else if e.contains("not the report JSON") {
                "not the report JSON"
            } else if e.contains("cites") {
                "citations"
            } else {
                "other"
            };
            *reasons.entry(kind.into()).or_default() += 1;
        }
    }
    let ms_of = |path: &str| -> Vec<f64> {
        reports.iter().filter(|r| r["path"] == path).map(|r| r["duration_ms"].as_f64().unwrap()).collect()
    };
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let result = json!({
        "command": "scripts/report-bench.sh",
        "cases": n,
        "machine": {"cpus": cpus, "llm_threads": 1, "note": "CPU only; other builds may share the cores"},
        "llm": {"backend": "ollama (gmmas-ollama-bridge -> llama-server)", "model": llm::CHAT_MODEL, "digest": llm::chat_digest().unwrap(),
                "temperature": 0.0, "attempts_per_report": 2},
        "retrieval": reports[0]["retrieval"]["method"],
        "kb_version": reports[0]["kb_version"],
        "validation": {
            "first_answer_valid": first_valid,
            "reports_from_llm_after_retry": llm_path,
            "llm_answers": answered.len(),
            "llm_answers_valid": answered.iter().filter(|a| a["outcome"] == "valid").count(),
            "stored_reports_valid": stored_valid,
            "rejection_reasons": reasons,
        },
        "time_ms": {
            "report_total_all": stats(reports.iter().map(|r| r["duration_ms"].as_f64().unwrap()).collect()),
            "report_total_llm_path": stats(ms_of("llm")),
            "report_total_fallback_after_llm": stats(ms_of("fallback")),
            "llm_call": stats(answered.iter().map(|a| a["ms"].as_f64().unwrap()).collect()),
            "fallback_only_in_process": stats(fallback_ms),
        },
        "tokens": {
            "prompt": stats(answered.iter().map(|a| a["prompt_tokens"].as_f64().unwrap()).collect()),
            "completion": stats(answered.iter().map(|a| a["completion_tokens"].as_f64().unwrap()).collect()),
        },
        "wall_s": wall_s,
        "measured_at": chrono::Utc::now().to_rfc3339(),
    });
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(format!("{out_dir}/bench.json"), serde_json::to_string_pretty(&result).unwrap()).unwrap();
    let t = &result["time_ms"];
    let f = |v: &Value| v.as_f64().map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into());
    let f2 = |v: &Value| v.as_f64().map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    let md = format!(
        "# Report service measurements\n\nCommand: `scripts/report-bench.sh` ({n} phantom cases {DIMS:?} through ingest, preprocess, infer \
         (tiny test model) and report; LLM {} at temperature 0 via the Ollama bridge to llama-server, 1 thread, {cpus} CPUs; retrieval {}).\n\n\
         | what | result |\n|---|---|\n\
         | reports whose first LLM answer passed validation | {first_valid} / {n} |\n\
         | reports written by the LLM after one retry with the reasons | {llm_path} / {n} |\n\
         | LLM answers that passed validation | {} / {} |\n\
         | stored reports that pass validation (LLM or fallback) | {stored_valid} / {n} |\n\
         | time per report, all (median / p90) | {} / {} ms |\n\
         | time per report, LLM path (median) | {} ms |\n\
         | time per LLM call (median / p90) | {} / {} ms |\n\
         | time per report, fallback only (median, in-process) | {} ms |\n\n\
         Rejection reasons (counted per finding): {}\n",
        llm::CHAT_MODEL,
        result["retrieval"].as_str().unwrap_or("?"),
        result["validation"]["llm_answers_valid"],
        result["validation"]["llm_answers"],
        f(&t["report_total_all"]["median"]),
        f(&t["report_total_all"]["p90"]),
        f(&t["report_total_llm_path"]["median"]),
        f(&t["llm_call"]["median"]),
        f(&t["llm_call"]["p90"]),
        f2(&t["fallback_only_in_process"]["median"]),
        serde_json::to_string(&result["validation"]["rejection_reasons"]).unwrap(),
    );
    std::fs::write(format!("{out_dir}/bench.md"), md).unwrap();
    // One report as stored, JSON and page, for readers of the results.
    let first = &cases[0];
    std::fs::write(format!("{out_dir}/example-report.json"), serde_json::to_string_pretty(&reports[0]).unwrap())
        .unwrap();
    let page = sys
        .request(reqwest::Method::GET, &format!("/api/v1/tenants/{TENANT}/cases/{first}/report.html"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    std::fs::write(format!("{out_dir}/example-report.html"), page).unwrap();
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
    sys.shutdown().await;
    stack.stop().await;
}
