//! Least privilege on the bus and in the database: every service as its own NATS user over TLS
//! with only its subjects, and as the service database role that cannot change the schema.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gmmas_e2e::{System, phantom_files};
use gmmas_runtime::{CommonConfig, bus, bus_auth};

const TENANT: &str = "hospital-s";
const DIMS: [usize; 3] = [48, 48, 40];

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl CLI).
fn make_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is installed");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=gmmas test CA"],
    ]
    .concat());
    run(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

fn bus_config(sys: &System, user: &str, password_file: &Path, ca: Option<&Path>) -> CommonConfig {
    CommonConfig {
        nats_url: format!("nats://127.0.0.1:{}", sys.nats_port),
        nats_user: user.into(),
        nats_password_file: password_file.display().to_string(),
        nats_tls_ca_file: ca.map(|p| p.display().to_string()).unwrap_or_default(),
        ..Default::default()
    }
}

fn sql_state(e: &sqlx::Error) -> String {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.to_string()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_runs_least_privileged_on_the_bus_and_in_the_database() {
    let mut sys = System::start_with(&[], &[]).await.unwrap();
    let secrets = sys.dir().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let (ca, cert, key) = make_tls(sys.dir());

    // The bus: one user per service, TLS only.
    let mut passwords = Vec::new();
    for g in bus_auth::grants() {
        let pw = format!("pw-{}-{}", g.service, uuid::Uuid::new_v4().simple());
        std::fs::write(secrets.join(format!("{}.password", g.service)), &pw).unwrap();
        passwords.push((g.service.to_string(), pw));
    }
    std::fs::write(secrets.join("admin.password"), "admin-pw").unwrap();
    let tls = bus_auth::ServerTls {
        cert_file: cert.display().to_string(),
        key_file: key.display().to_string(),
        verify_ca_file: None,
    };
    let store = sys.dir().join("nats-secure");
    let conf = bus_auth::server_config(
        &format!("127.0.0.1:{}", sys.nats_port),
        &store.display().to_string(),
        &passwords,
        "admin-pw",
        Some(&tls),
    );
    let conf_path = sys.dir().join("nats.conf");
    std::fs::write(&conf_path, conf).unwrap();
    sys.restart_nats_with(&conf_path).await.unwrap();

    // The database: a login role in the service group role, which owns nothing.
    let role = format!("gmmas_test_app_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE ROLE {role} LOGIN IN ROLE gmmas_service")).execute(&sys.db).await.unwrap();
    let (base, db_name) = sys.db_url.rsplit_once('/').unwrap();
    let host = base.rsplit_once('@').map(|(_, h)| h).unwrap_or(base.trim_start_matches("postgres://"));
    let app_url = format!("postgres://{role}@{host}/{db_name}");
    let app = sqlx::PgPool::connect(&app_url).await.unwrap();
    for ddl in [
        "CREATE TABLE intruder (i int)",
        "ALTER TABLE cases ADD COLUMN intruder int",
        "DROP TABLE audit_log",
        "UPDATE audit_log SET actor = 'someone else'",
        "DELETE FROM audit_log",
        "DELETE FROM _sqlx_migrations",
        "TRUNCATE cases",
    ] {
        let err = sqlx::query(ddl).execute(&app).await.expect_err(ddl);
        assert_eq!(sql_state(&err), "42501", "{ddl}: {err}");
    }
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM cases").fetch_one(&app).await.unwrap();
    assert_eq!(n, 0);
    app.close().await;

    sys.set_env("GMMAS_DATABASE_URL", &app_url);
    sys.set_env("GMMAS_MIGRATE_ON_START", "false");
    sys.set_env("GMMAS_NATS_TLS_CA_FILE", &ca.display().to_string());
    sys.set_env("GMMAS_LLM_BACKEND", "none");
    for name in ["ingest", "preprocess", "infer", "curate", "report", "api"] {
        let env = vec![
            ("GMMAS_NATS_USER".to_string(), name.to_string()),
            ("GMMAS_NATS_PASSWORD_FILE".to_string(), secrets.join(format!("{name}.password")).display().to_string()),
        ];
        sys.start_service_with(name, &env).await.unwrap();
    }
    sys.api = format!("http://{}", sys.service("api").http_addr);

    // The whole pipeline works with only these rights.
    let (_, files) = phantom_files(21, DIMS);
    let (status, body) = sys.upload(TENANT, "least-privilege-1", files).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let id = body["case_id"].as_str().unwrap().to_string();
    let view = sys.wait_case(TENANT, &id, Duration::from_secs(180)).await.map_err(|e| sys.with_logs(e)).unwrap();
    assert_eq!(view["status"], "done", "{view}");
    // The report (fallback: no LLM here) is written and announced with the report user's rights.
    let mut report = serde_json::Value::Null;
    for _ in 0..240 {
        let (status, body) = sys.get_json(&format!("/api/v1/tenants/{TENANT}/cases/{id}/report")).await.unwrap();
        if status == 200 {
            report = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(report["path"], "fallback", "{report}");

    // What the bus refuses.
    let pw = |u: &str| secrets.join(format!("{u}.password"));
    let wrong = secrets.join("wrong.password");
    std::fs::write(&wrong, "not-the-password").unwrap();
    let err = bus::connect_client(&bus_config(&sys, "infer", &wrong, Some(&ca)), Duration::from_secs(5))
        .await
        .expect_err("a wrong password is refused");
    assert!(format!("{err:#}").contains("refused the credentials"), "{err:#}");
    let err = bus::connect_client(&bus_config(&sys, "infer", &pw("infer"), None), Duration::from_secs(5))
        .await
        .expect_err("a client that cannot verify the server's certificate is refused");
    assert!(format!("{err:#}").contains("TLS"), "{err:#}");

    // The ingest user cannot forge an analysis, nor take the inference queue's work.
    let ingest = bus::connect_client(&bus_config(&sys, "ingest", &pw("ingest"), Some(&ca)), Duration::from_secs(5))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(ingest.clone());
    let forged = format!("gmmas.{TENANT}.scan.analyzed");
    let sent = tokio::time::timeout(Duration::from_secs(3), async {
        js.publish(forged.clone(), b"forged".to_vec().into()).await?.await.map_err(anyhow::Error::from)
    })
    .await;
    assert!(!matches!(sent, Ok(Ok(_))), "a forged scan.analyzed was accepted");
    let next = tokio::time::timeout(
        Duration::from_secs(3),
        ingest.request(format!("$JS.API.CONSUMER.MSG.NEXT.{}.infer", gmmas_contracts::STREAM), "1".into()),
    )
    .await;
    assert!(!matches!(next, Ok(Ok(_))), "ingest pulled from the inference queue");

    // The operator's view: nothing forged landed, exactly one analysis was announced.
    let admin_pw = secrets.join("admin.password");
    let admin =
        bus::connect_client(&bus_config(&sys, "admin", &admin_pw, Some(&ca)), Duration::from_secs(5)).await.unwrap();
    let stream = async_nats::jetstream::new(admin).get_stream(gmmas_contracts::STREAM).await.unwrap();
    let info = stream.get_last_raw_message_by_subject(&forged).await.unwrap();
    assert_ne!(&info.payload[..], b"forged");
    // Every refusal the server logged is one of the two above: no service lacked a right it needs.
    let log = std::fs::read_to_string(sys.dir().join("logs").join("nats.log")).unwrap_or_default();
    let refusals: Vec<&str> =
        log.lines().filter(|l| l.contains("Publish Violation") || l.contains("Subscription Violation")).collect();
    assert!(!refusals.is_empty(), "the server logs its refusals: {log}");
    let others: Vec<&&str> = refusals.iter().filter(|l| !l.contains("User \"ingest\"")).collect();
    assert!(others.is_empty(), "services were refused subjects they need: {others:#?}");

    sys.shutdown().await;
    let admin_pool = sqlx::PgPool::connect(&gmmas_e2e::admin_url()).await.unwrap();
    sqlx::query(&format!("DROP ROLE IF EXISTS {role}")).execute(&admin_pool).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_ddl_rights_refuses_an_unmigrated_database() {
    let admin = sqlx::PgPool::connect(&gmmas_e2e::admin_url()).await.unwrap();
    let name = format!("gmmas_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
    let base = gmmas_e2e::admin_url();
    let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
    let err = gmmas_runtime::db::connect_with(&url, Duration::from_secs(2), false).await.expect_err("no schema");
    assert!(format!("{err:#}").contains("gmmas migrate"), "{err:#}");
    // Once migrated (by the migrations role), the same check passes.
    gmmas_runtime::db::connect_with(&url, Duration::from_secs(2), true).await.unwrap().close().await;
    gmmas_runtime::db::connect_with(&url, Duration::from_secs(2), false).await.unwrap().close().await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await.unwrap();
}
