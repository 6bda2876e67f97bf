//! Who may do what on the bus: one NATS user per service with the subjects its work needs (its
//! own consumer, the events it announces, the buckets it reads or writes), and the server config.

use std::fmt::Write as _;

use gmmas_contracts::{self as contracts, Event, ModelEvent};

/// How a service uses an object-store bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads objects.
    Read,
    /// Reads, writes and deletes objects.
    Write,
}

/// What one service does on the bus.
#[derive(Debug, Clone)]
pub struct Grant {
    pub service: &'static str,
    /// Durable consumers it pulls from.
    pub consumes: Vec<&'static str>,
    /// Subjects (NATS wildcards allowed) it publishes events to.
    pub publishes: Vec<String>,
    /// Buckets it uses.
    pub buckets: Vec<(&'static str, Access)>,
    /// Subjects it listens to outside JetStream (wake-ups).
    pub subscribes: Vec<String>,
}

/// Every service's grant. `case.failed` is open to all (any stage, and the sweeper that runs in
/// any process, may give up on a case).
pub fn grants() -> Vec<Grant> {
    use Access::{Read, Write};
    let ev = |e: Event| e.all_tenants();
    let failed = ev(Event::CaseFailed);
    let volumes = contracts::VOLUMES_BUCKET;
    let models = contracts::MODELS_BUCKET;
    vec![
        Grant {
            service: "ingest",
            consumes: vec![],
            publishes: vec![ev(Event::ScanIngested), failed.clone()],
            buckets: vec![(volumes, Write)],
            subscribes: vec![],
        },
        Grant {
            service: "preprocess",
            consumes: vec![contracts::consumers::PREPROCESS],
            publishes: vec![ev(Event::ScanPreprocessed), failed.clone()],
            buckets: vec![(volumes, Write)],
            subscribes: vec![],
        },
        Grant {
            service: "infer",
            consumes: vec![contracts::consumers::INFER],
            publishes: vec![ev(Event::ScanAnalyzed), failed.clone()],
            // Models: infer registers its configured starting weights when the registry is empty.
            buckets: vec![(volumes, Write), (models, Write)],
            // A promoted model is picked up at once.
            subscribes: vec![ModelEvent::Promoted.subject()],
        },
        Grant {
            service: "curate",
            consumes: vec![contracts::consumers::CURATE],
            publishes: vec![ev(Event::DatasetUpdated), failed.clone()],
            buckets: vec![(volumes, Write), (models, Read)],
            subscribes: vec![],
        },
        Grant {
            service: "train",
            consumes: vec![],
            publishes: vec![ModelEvent::Candidate.subject(), ModelEvent::Promoted.subject(), failed.clone()],
            buckets: vec![(volumes, Read), (models, Write)],
            // A new curated dataset wakes the trainer at once.
            subscribes: vec![ev(Event::DatasetUpdated)],
        },
        Grant {
            service: "report",
            consumes: vec![contracts::consumers::REPORT],
            publishes: vec![ev(Event::ReportReady), failed.clone()],
            // It reads no object; the bucket is only looked up at connect.
            buckets: vec![(volumes, Read)],
            subscribes: vec![],
        },
        Grant {
            service: "api",
            // The API ingests uploads, stores clinicians' labels and can roll a model back.
            consumes: vec![],
            publishes: vec![ev(Event::ScanIngested), ModelEvent::Promoted.subject(), failed],
            buckets: vec![(volumes, Write), (models, Read)],
            subscribes: vec![],
        },
    ]
}

/// The grant of `service`, if it has one.
pub fn grant(service: &str) -> Option<Grant> {
    grants().into_iter().find(|g| g.service == service)
}

/// The inbox prefix of a service's connection: replies and object deliveries to one service
/// cannot be read by another.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// The subjects a grant lets its user publish and subscribe to.
pub fn permissions(g: &Grant) -> (Vec<String>, Vec<String>) {
    let js = "$JS.API";
    let stream = contracts::STREAM;
    let mut publish = vec![
        format!("{js}.INFO"),
        // Every service makes sure the stream exists with the configured retention.
        format!("{js}.STREAM.INFO.{stream}"),
        format!("{js}.STREAM.CREATE.{stream}"),
        format!("{js}.STREAM.UPDATE.{stream}"),
    ];
    for d in &g.consumes {
        publish.extend([
            format!("{js}.CONSUMER.INFO.{stream}.{d}"),
            format!("{js}.CONSUMER.CREATE.{stream}.{d}"),
            format!("{js}.CONSUMER.CREATE.{stream}.{d}.>"),
            format!("{js}.CONSUMER.DURABLE.CREATE.{stream}.{d}"),
            format!("{js}.CONSUMER.MSG.NEXT.{stream}.{d}"),
            format!("$JS.ACK.{stream}.{d}.>"),
        ]);
    }
    for (bucket, access) in &g.buckets {
        let s = format!("OBJ_{bucket}");
        publish.extend([
            format!("{js}.STREAM.INFO.{s}"),
            format!("{js}.STREAM.CREATE.{s}"),
            format!("{js}.STREAM.MSG.GET.{s}"),
            format!("{js}.DIRECT.GET.{s}"),
            format!("{js}.DIRECT.GET.{s}.>"),
            // Reading an object is an ephemeral ordered consumer on its chunks.
            format!("{js}.CONSUMER.CREATE.{s}"),
            format!("{js}.CONSUMER.CREATE.{s}.>"),
            format!("{js}.CONSUMER.DELETE.{s}.>"),
            format!("{js}.CONSUMER.INFO.{s}.>"),
        ]);
        if *access == Access::Write {
            publish.extend([format!("$O.{bucket}.>"), format!("{js}.STREAM.PURGE.{s}")]);
        }
    }
    publish.extend(g.publishes.iter().cloned());
    let mut subscribe = vec![format!("{}.>", inbox_prefix(g.service))];
    subscribe.extend(g.subscribes.iter().cloned());
    (publish, subscribe)
}

/// Where a server's TLS files are.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_file: String,
    pub key_file: String,
    /// CA that signs client certificates; with it, clients must present one.
    pub verify_ca_file: Option<String>,
}

/// A nats-server configuration with JetStream, one user per service (password given), an
/// `admin` user for operators and tools, and TLS when given.
pub fn server_config(
    listen: &str,
    store_dir: &str,
    passwords: &[(String, String)],
    admin_password: &str,
    tls: Option<&ServerTls>,
) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let list = |v: &[String]| v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    let _ = writeln!(out, "# GMMAS bus: JetStream, one user per service with only the subjects it needs.");
    let _ = writeln!(out, "listen: {}", q(listen));
    let _ = writeln!(out, "jetstream {{ store_dir: {} }}", q(store_dir));
    if let Some(t) = tls {
        let _ = writeln!(out, "tls {{");
        let _ = writeln!(out, "  cert_file: {}", q(&t.cert_file));
        let _ = writeln!(out, "  key_file: {}", q(&t.key_file));
        if let Some(ca) = &t.verify_ca_file {
            let _ = writeln!(out, "  ca_file: {}\n  verify: true", q(ca));
        }
        let _ = writeln!(out, "  timeout: 5");
        let _ = writeln!(out, "}}");
    }
    let _ = writeln!(out, "authorization {{\n  users: [");
    let _ = writeln!(out, "    {{ user: \"admin\", password: {} }}", q(admin_password));
    for (service, password) in passwords {
        let Some(g) = grant(service) else { continue };
        let (publish, subscribe) = permissions(&g);
        let _ = writeln!(
            out,
            "    {{ user: {}, password: {}, permissions: {{\n        publish: {{ allow: [{}] }}\n        \
             subscribe: {{ allow: [{}] }}\n        allow_responses: true\n    }} }}",
            q(service),
            q(password),
            list(&publish),
            list(&subscribe)
        );
    }
    let _ = writeln!(out, "  ]\n}}");
    out
}

/// Whether `subject` matches the NATS pattern (`*` one token, `>` the rest).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut s = subject.split('.');
    for p in pattern.split('.') {
        match (p, s.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    s.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_publishes_only_its_own_events() {
        let allowed = |svc: &str, subject: &str| {
            let (publish, _) = permissions(&grant(svc).unwrap());
            publish.iter().any(|p| subject_matches(p, subject))
        };
        assert!(allowed("ingest", "gmmas.h1.scan.ingested"));
        assert!(!allowed("ingest", "gmmas.h1.scan.analyzed"), "ingest must not forge analyses");
        assert!(allowed("infer", "gmmas.h1.scan.analyzed"));
        assert!(!allowed("infer", "gmmas._models.model.promoted"));
        assert!(allowed("train", "gmmas._models.model.candidate"));
        assert!(!allowed("preprocess", "$O.gmmas-models.C.x"), "preprocess writes no model");
        assert!(!allowed("curate", "$O.gmmas-models.C.x"), "curate writes no model");
        assert!(allowed("report", "gmmas.h1.report.ready"));
        assert!(!allowed("report", "$O.gmmas-volumes.C.x"), "report writes no object");
        assert!(allowed("train", "$O.gmmas-models.C.x"));
        assert!(!allowed("api", "$JS.API.CONSUMER.MSG.NEXT.GMMAS.infer"), "the API pulls no stage's work");
        assert!(allowed("infer", "$JS.API.CONSUMER.MSG.NEXT.GMMAS.infer"));
        assert!(!allowed("infer", "$JS.API.STREAM.PURGE.GMMAS"));
        assert!(!allowed("infer", "$JS.API.STREAM.DELETE.GMMAS"));
        let (_, sub) = permissions(&grant("infer").unwrap());
        assert_eq!(sub, vec!["_INBOX_infer.>".to_string(), "gmmas._models.model.promoted".to_string()]);
        let (_, sub) = permissions(&grant("ingest").unwrap());
        assert_eq!(sub, vec!["_INBOX_ingest.>".to_string()], "ingest listens to nothing but its replies");
    }

    #[test]
    fn subject_patterns_match_like_nats() {
        assert!(subject_matches("gmmas.*.scan.ingested", "gmmas.a.scan.ingested"));
        assert!(!subject_matches("gmmas.*.scan.ingested", "gmmas.a.b.scan.ingested"));
        assert!(subject_matches("$O.b.>", "$O.b.C.x"));
        assert!(!subject_matches("$O.b.>", "$O.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
    }

    #[test]
    fn the_server_config_names_every_service_and_quotes_secrets() {
        let pw: Vec<(String, String)> =
            grants().iter().map(|g| (g.service.to_string(), format!("pw-{}\"x", g.service))).collect();
        let tls = ServerTls { cert_file: "/c.pem".into(), key_file: "/k.pem".into(), verify_ca_file: None };
        let conf = server_config("127.0.0.1:4222", "/data", &pw, "adm", Some(&tls));
        for g in grants() {
            assert!(conf.contains(&format!("user: \"{}\"", g.service)), "{conf}");
        }
        assert!(conf.contains(r#"password: "pw-ingest\"x""#), "passwords are escaped: {conf}");
        assert!(conf.contains("cert_file: \"/c.pem\""));
        assert!(!conf.contains("verify"), "no client certificates asked without a CA");
    }
}
