//! End-to-end access control of the API: one hospital's token reaches none of another's cases
//! on any endpoint, bad tokens and wrong roles are refused, tenants come from an administrator,
//! every request is audited in a log nobody can rewrite, CORS is closed, hosts are checked.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::time::Duration;

use gmmas_contracts::http::{AuditEntry, IssuedToken, LabelsStored};
use gmmas_e2e::{System, phantom_files};
use reqwest::Method;
use serde_json::{Value, json};

const A: &str = "hospital-a";
const B: &str = "hospital-b";
const DIMS: [usize; 3] = [64, 64, 48];

async fn call(sys: &System, method: Method, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", sys.api));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_roles_enforced_and_every_request_audited() {
    let sys = System::start(&[]).await.unwrap();
    let (_, files) = phantom_files(5, DIMS);

    // Tenants come from an administrator: an upload to an unknown one is refused, not created.
    let (status, body) =
        call(&sys, Method::GET, &format!("/api/v1/tenants/{A}/cases"), Some(&sys.token(A, "clinician"))).await;
    assert_eq!(status, 200, "{body}");
    // An upload of A's files as "a-1" with A's clinician token, bypassing the harness (which
    // would create the tenant): (status, body).
    let post_a1 = || {
        let mut form = reqwest::multipart::Form::new().text("case_ref", "a-1");
        for (n, b) in &files {
            form = form.part(n.to_string(), reqwest::multipart::Part::bytes(b.clone()).file_name("x.nii.gz"));
        }
        let req = reqwest::Client::new()
            .post(format!("{}/api/v1/tenants/{A}/cases", sys.api))
            .bearer_auth(sys.token(A, "clinician"))
            .multipart(form);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    assert_eq!(post_a1().await.0, 404);
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM tenants").fetch_one(&sys.db).await.unwrap();
    assert_eq!(n, 0, "an upload created a tenant");
    // A clinician cannot create tenants; an admin can (over the API), once.
    let admin = sys.token("ops", "admin");
    let create = |t: &str, token: String| {
        let url = format!("{}/api/v1/admin/tenants", sys.api);
        let body = json!({ "id": t });
        async move { reqwest::Client::new().post(url).bearer_auth(token).json(&body).send().await.unwrap().status() }
    };
    assert_eq!(create(A, sys.token(A, "clinician")).await, 403);
    assert_eq!(create(A, admin.clone()).await, 201);
    assert_eq!(create(A, admin.clone()).await, 409);
    assert_eq!(create(B, admin.clone()).await, 201);

    // Hospital A's case, analyzed.
    let (status, created) = sys.upload(A, "a-1", files.clone()).await.unwrap();
    assert_eq!(status, 201, "{created}");
    let id = created["case_id"].as_str().unwrap().to_string();
    let view = sys.wait_case(A, &id, Duration::from_secs(180)).await.unwrap();
    assert_eq!(view["status"], "done", "{view}");
    // A duplicate upload is a 409 that does not reveal the existing case's id.
    let (status, body) = post_a1().await;
    assert_eq!(status, 409);
    assert!(!body.contains(&id), "{body}");

    // Hospital B's clinician: every endpoint about A's case looks like a missing case.
    let b = sys.token(B, "clinician");
    let a_paths = [
        (Method::GET, format!("/api/v1/tenants/{A}/cases")),
        (Method::GET, format!("/api/v1/tenants/{A}/cases/{id}")),
        (Method::GET, format!("/api/v1/tenants/{A}/cases/{id}/segmentation")),
        (Method::GET, format!("/api/v1/tenants/{A}/cases/{id}/uncertainty")),
        (Method::GET, format!("/api/v1/tenants/{A}/cases/{id}/report")),
        (Method::GET, format!("/api/v1/tenants/{A}/cases/{id}/report.html")),
        (Method::PUT, format!("/api/v1/tenants/{A}/cases/{id}/labels")),
        (Method::PUT, format!("/api/v1/tenants/{A}/cases/{id}/labels/segmentation")),
        (Method::GET, format!("/api/v1/tenants/{A}/audit")),
        (Method::POST, format!("/api/v1/tenants/{A}/cases")),
    ];
    let mut refused = Vec::new();
    for (m, p) in &a_paths {
        let (status, body) = call(&sys, m.clone(), p, Some(&b)).await;
        assert_eq!(status, 404, "{m} {p}: {body}");
        refused.push(body);
    }
    // The answers are all alike and name neither the case nor the tenant.
    assert!(refused.iter().all(|r| *r == refused[0]), "{refused:?}");
    assert!(!refused[0].to_string().contains(&id) && !refused[0].to_string().contains(A));
    // Through B's own path, A's case id is just as unknown; B's list does not show it.
    for p in [format!("/api/v1/tenants/{B}/cases/{id}"), format!("/api/v1/tenants/{B}/cases/{id}/segmentation")] {
        assert_eq!(call(&sys, Method::GET, &p, Some(&b)).await.0, 404, "{p}");
    }
    let (status, list) = call(&sys, Method::GET, &format!("/api/v1/tenants/{B}/cases"), Some(&b)).await;
    assert_eq!((status, list), (200, json!([])));
    // A's own clinician reads it, with the labels and the audit trail.
    let a = sys.token(A, "clinician");
    assert_eq!(call(&sys, Method::GET, &format!("/api/v1/tenants/{A}/cases/{id}"), Some(&a)).await.0, 200);
    let resp = reqwest::Client::new()
        .put(format!("{}/api/v1/tenants/{A}/cases/{id}/labels", sys.api))
        .bearer_auth(&a)
        .json(&json!({ "idh_mutant": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stored: LabelsStored = resp.json().await.unwrap();
    assert_eq!(stored.classes.author, "test-clinician", "the author is the token's subject: {stored:?}");
    assert_eq!(stored.classes.idh_mutant, Some(true));

    // Bad tokens: missing, wrongly signed, expired, unsigned.
    let list_a = format!("/api/v1/tenants/{A}/cases");
    let resp = reqwest::Client::new().get(format!("{}{list_a}", sys.api)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let t = gmmas_contracts::TenantId::new(A).unwrap();
    let cfg = gmmas_runtime::auth::AuthConfig::default();
    let foreign = gmmas_runtime::auth::issue(
        b"a-key-that-is-not-the-api-key-0123456789",
        &cfg,
        "intruder",
        &t,
        gmmas_runtime::auth::Role::Clinician,
        Duration::from_secs(600),
    )
    .unwrap();
    assert_eq!(call(&sys, Method::GET, &list_a, Some(&foreign)).await.0, 401);
    let expired = expired_token(&sys, A);
    let (status, body) = call(&sys, Method::GET, &list_a, Some(&expired)).await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("expired"), "{body}");
    let unsigned = {
        let seg = |v: Value| b64url(v.to_string().as_bytes());
        format!("{}.{}.", seg(json!({"alg": "none"})), seg(json!({"sub": "x", "tenant": A, "role": "clinician"})))
    };
    assert_eq!(call(&sys, Method::GET, &list_a, Some(&unsigned)).await.0, 401);

    // Roles: a clinician reaches none of the ml-engineer or admin routes; an ml-engineer none
    // of the clinical ones.
    for (m, p) in [
        (Method::GET, "/api/v1/models"),
        (Method::POST, "/api/v1/models/complete/rollback"),
        (Method::GET, "/metrics"),
        (Method::GET, "/api/v1/admin/tenants"),
        (Method::POST, "/api/v1/admin/tokens"),
    ] {
        assert_eq!(call(&sys, m.clone(), p, Some(&a)).await.0, 403, "{m} {p}");
    }
    let ml = sys.token(A, "ml-engineer");
    assert_eq!(call(&sys, Method::GET, "/api/v1/models", Some(&ml)).await.0, 200);
    assert_eq!(call(&sys, Method::GET, &format!("/api/v1/tenants/{A}/cases/{id}"), Some(&ml)).await.0, 403);
    let metrics = reqwest::Client::new().get(format!("{}/metrics", sys.api)).bearer_auth(&ml).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    // An admin issues a token that works, for existing tenants only.
    let issued = reqwest::Client::new()
        .post(format!("{}/api/v1/admin/tokens", sys.api))
        .bearer_auth(&admin)
        .json(&json!({ "tenant": B, "role": "clinician", "subject": "dr-b", "ttl_s": 600 }))
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 200);
    let issued: IssuedToken = issued.json().await.unwrap();
    let tok = issued.token.as_str();
    assert_eq!(call(&sys, Method::GET, &format!("/api/v1/tenants/{B}/cases"), Some(tok)).await.0, 200);
    let (status, _) = call(&sys, Method::POST, "/api/v1/admin/tokens", Some(&admin)).await;
    assert!(status == 400 || status == 415, "no body: {status}");

    // CORS is closed: no allow-origin header, on a preflight or a read.
    let pre = reqwest::Client::new()
        .request(Method::OPTIONS, format!("{}{list_a}", sys.api))
        .header("Origin", "https://evil.example")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert!(pre.headers().get("access-control-allow-origin").is_none());
    let read = reqwest::Client::new()
        .get(format!("{}{list_a}", sys.api))
        .bearer_auth(&a)
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert!(read.headers().get("access-control-allow-origin").is_none());

    // The audit trail: reads and refusals, with who, outcome and request id; A sees B's probes.
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/tenants/{A}/audit?limit=1000", sys.api))
        .bearer_auth(&a)
        .header("x-request-id", "audit-read-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "audit-read-1");
    let trail: Vec<AuditEntry> = resp.json().await.unwrap();
    let has = |action: &str, outcome: i32| trail.iter().any(|e| e.action == action && e.outcome == Some(outcome));
    assert!(has("GET /api/v1/tenants/{tenant}/cases/{id}", 200), "{trail:?}");
    assert!(has("GET /api/v1/tenants/{tenant}/cases/{id}/segmentation", 404), "B's probe is in A's trail");
    assert!(has("PUT /api/v1/tenants/{tenant}/cases/{id}/labels", 200));
    assert!(has("GET /api/v1/tenants/{tenant}/cases", 401));
    // Every request row names its request; the domain events (case received, labels updated)
    // that handlers record beside them are there too.
    let requests: Vec<&AuditEntry> =
        trail.iter().filter(|e| e.action.starts_with("GET ") || e.action.starts_with("PUT ")).collect();
    assert!(requests.iter().all(|e| e.request_id.as_deref().is_some_and(|r| !r.is_empty())), "{requests:?}");
    assert!(trail.iter().any(|e| e.action == "labels.updated" && e.actor == "test-clinician"), "{trail:?}");
    // B's trail holds nothing of A's: about A's case, only B's own refused guesses.
    let (_, b_trail) = call(&sys, Method::GET, &format!("/api/v1/tenants/{B}/audit"), Some(&b)).await;
    let about_a: Vec<&Value> = b_trail.as_array().unwrap().iter().filter(|e| e["case_id"] == id.as_str()).collect();
    assert!(!about_a.is_empty() && about_a.iter().all(|e| e["outcome"] == 404), "{b_trail}");
    // Append-only, even for the database superuser the tests connect as.
    for sql in ["UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"] {
        let err = sqlx::query(sql).execute(&sys.db).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_beyond_loopback_needs_allowed_hosts_and_checks_the_host_header() {
    let mut sys = System::start_with(&[], &[]).await.unwrap();
    let port = gmmas_runtime::supervise::free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Bound to every interface without allowed_hosts: refuses to start, naming the setting.
    let mut svc =
        gmmas_runtime::supervise::start("api", &format!("0.0.0.0:{port}"), &service_env(&sys), dir.path()).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), svc.child.wait()).await.unwrap().unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(&svc.log).unwrap();
    assert!(log.contains("GMMAS_ALLOWED_HOSTS"), "{log}");
    // With allowed hosts, another Host header is refused (DNS rebinding) and the named one served.
    sys.set_env("GMMAS_ALLOWED_HOSTS", "gmmas.hospital.example,127.0.0.1");
    sys.start_service("api").await.unwrap();
    let api = sys.service("api").http_addr.clone();
    let get = |host: &'static str| {
        let url = format!("http://{api}/healthz");
        async move { reqwest::Client::new().get(url).header("Host", host).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("evil.example").await, 421);
    assert_eq!(get("gmmas.hospital.example:8080").await, 200);
    sys.shutdown().await;
}

fn service_env(sys: &System) -> Vec<(String, String)> {
    ["GMMAS_NATS_URL", "GMMAS_DATABASE_URL", "GMMAS_AUTH_KEY_FILE"]
        .iter()
        .map(|k| (k.to_string(), sys.env_value(k).unwrap_or_default()))
        .collect()
}

/// A token signed with the system's key whose `exp` passed an hour ago (beyond the leeway).
fn expired_token(sys: &System, tenant: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = gmmas_runtime::auth::Claims {
        sub: "late".into(),
        tenant: tenant.into(),
        role: "clinician".into(),
        iss: "gmmas".into(),
        aud: "gmmas-api".into(),
        iat: now - 7200,
        exp: now - 3600,
        jti: "expired".into(),
    };
    sys.sign(&claims)
}

fn b64url(b: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The served OpenAPI document needs no token, is the committed one, and every operation it
/// lists is routed: no 405 and no "no such route" for any documented path and method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let sys = System::start_with(&[], &["api"]).await.unwrap();
    let doc: Value = reqwest::get(format!("{}/api/v1/openapi.json", sys.api)).await.unwrap().json().await.unwrap();
    let committed: Value =
        serde_json::from_str(include_str!("../../services/api/openapi.json")).expect("committed document");
    assert_eq!(doc, committed, "the served document differs from services/api/openapi.json");
    let case = uuid::Uuid::new_v4().to_string();
    let mut checked = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        let path = template.replace("{tenant}", A).replace("{case_id}", &case).replace("{role}", "incomplete");
        for method in item.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = sys.request(m.clone(), &path).send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            assert_ne!(status, 405, "{m} {template} is documented but not routed for that method");
            let unrouted = status == 404 && (body.is_empty() || body.contains("no such route"));
            assert!(!unrouted, "{m} {template} is documented but not routed: {body}");
            checked += 1;
        }
    }
    assert!(checked >= 15, "{checked}");
    sys.shutdown().await;
}
