//! Bearer tokens of the HTTP API: issuing GMMAS's own (HS256, key from a file) and verifying
//! them or a hospital OIDC provider's (JWKS fetched, cached by key id, refreshed on rotation).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gmmas_contracts::TenantId;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::RwLock;

/// What a caller may do. A token carries one role or several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Upload, read, correct labels, read reports and the audit trail of the own tenant.
    Clinician,
    /// The model registry, training runs and metrics.
    MlEngineer,
    /// Tenants and tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Clinician, Role::MlEngineer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Clinician => "clinician",
            Role::MlEngineer => "ml-engineer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verified caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's subject (a user or service name; never a patient identifier).
    pub subject: String,
    pub tenant: TenantId,
    pub roles: BTreeSet<Role>,
}

impl Identity {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The roles as one comma-separated string (for the audit log).
    pub fn roles_text(&self) -> String {
        self.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",")
    }
}

/// Why a token was refused (the text goes back to the caller, so it names no key material).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token (send `Authorization: Bearer <token>`)")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token has expired")]
    Expired,
    #[error("token claim `{claim}`: {reason}")]
    Claim { claim: String, reason: String },
    #[error("signing keys unavailable: {0}")]
    Keys(String),
    #[error("auth configuration: {0}")]
    Config(String),
}

/// Settings of token verification and of the HTTP listener's request checks, flattened into
/// the configuration of each service with a public HTTP API (`GMMAS_AUTH_*`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// File holding the HS256 secret that signs GMMAS's own tokens (standalone install).
    pub auth_key_file: String,
    /// JWKS URL of the hospital's OIDC provider (its tokens are accepted instead).
    pub auth_jwks_url: String,
    /// Expected `iss` claim.
    pub auth_issuer: String,
    /// Expected `aud` claim.
    pub auth_audience: String,
    /// Claim holding the tenant (a string).
    pub auth_tenant_claim: String,
    /// Claim holding the role (a string or an array of strings).
    pub auth_role_claim: String,
    /// Longest time a fetched JWKS is used before it is fetched again, in seconds.
    pub auth_jwks_refresh_s: u64,
    /// Shortest time between two fetches of the JWKS (a token naming an unknown key id
    /// triggers one), in seconds.
    pub auth_jwks_min_refetch_s: u64,
    /// Clock skew allowed on `exp`/`nbf`, in seconds.
    pub auth_leeway_s: u64,
    /// Accepted `Host` header values (`name` or `name:port`); required when the listener is
    /// bound beyond loopback, so that DNS-rebinding pages cannot reach it.
    pub allowed_hosts: Vec<String>,
    /// Origins allowed to call the API from a browser (CORS); empty = none.
    pub cors_allowed_origins: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            auth_key_file: String::new(),
            auth_jwks_url: String::new(),
            auth_issuer: "gmmas".into(),
            auth_audience: "gmmas-api".into(),
            auth_tenant_claim: "tenant".into(),
            auth_role_claim: "role".into(),
            auth_jwks_refresh_s: 3600,
            auth_jwks_min_refetch_s: 10,
            auth_leeway_s: 30,
            allowed_hosts: Vec::new(),
            cors_allowed_origins: Vec::new(),
        }
    }
}

/// The claims of a token GMMAS issues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    pub role: String,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

/// Reads an HS256 secret from `path`: at least 32 bytes after trimming whitespace.
pub fn read_key_file(path: &std::path::Path) -> Result<Vec<u8>, AuthError> {
    let bytes = std::fs::read(path).map_err(|e| AuthError::Config(format!("reading {}: {e}", path.display())))?;
    let trimmed = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
    if trimmed.len() < 32 {
        return Err(AuthError::Config(format!(
            "{}: the signing key has {} bytes, expected at least 32",
            path.display(),
            trimmed.len()
        )));
    }
    Ok(trimmed)
}

/// Signs a token for `subject` in `tenant` with `role`, valid for `ttl` from now.
pub fn issue(
    key: &[u8],
    cfg: &AuthConfig,
    subject: &str,
    tenant: &TenantId,
    role: Role,
    ttl: Duration,
) -> Result<String, AuthError> {
    if subject.trim().is_empty() {
        return Err(AuthError::Config("the subject of a token must not be empty".into()));
    }
    let now = unix_now();
    let claims = Claims {
        sub: subject.to_string(),
        tenant: tenant.to_string(),
        role: role.as_str().to_string(),
        iss: cfg.auth_issuer.clone(),
        aud: cfg.auth_audience.clone(),
        iat: now,
        exp: now + ttl.as_secs().max(1),
        jti: uuid::Uuid::new_v4().to_string(),
    };
    sign(key, &claims)
}

/// Signs `claims` with the HS256 `key` (as [`issue`] does; tests use it for unusual claims).
pub fn sign(key: &[u8], claims: &Claims) -> Result<String, AuthError> {
    let key = EncodingKey::from_secret(key).map_err(|e| AuthError::Config(format!("signing key: {e}")))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key)
        .map_err(|e| AuthError::Config(format!("signing: {e}")))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Verifies bearer tokens against the configured keys.
#[derive(Clone)]
pub struct Verifier {
    cfg: Arc<AuthConfig>,
    keys: Arc<Keys>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &*self.keys {
            Keys::Shared(_) => "key file",
            Keys::Jwks(_) => "jwks",
        };
        f.debug_struct("Verifier").field("keys", &source).finish()
    }
}

enum Keys {
    Shared(DecodingKey),
    Jwks(Jwks),
}

/// A JWKS cache: keys by id, refetched when stale or when a token names an unknown key id
/// (at most once per `min_refetch`, so forged key ids cannot hammer the provider).
struct Jwks {
    url: String,
    client: reqwest::Client,
    max_age: Duration,
    min_refetch: Duration,
    state: RwLock<JwksState>,
}

#[derive(Default)]
struct JwksState {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    fetched: Option<Instant>,
}

impl Verifier {
    /// Builds the verifier: exactly one of `auth_key_file` and `auth_jwks_url` must be set.
    /// A JWKS is fetched once here so that a wrong URL fails at start-up.
    pub async fn from_config(cfg: &AuthConfig) -> Result<Verifier, AuthError> {
        let keys = match (cfg.auth_key_file.is_empty(), cfg.auth_jwks_url.is_empty()) {
            (false, true) => Keys::Shared(
                DecodingKey::from_secret(&read_key_file(cfg.auth_key_file.as_ref())?)
                    .map_err(|e| AuthError::Config(format!("{}: {e}", cfg.auth_key_file)))?,
            ),
            (true, false) => {
                let jwks = Jwks {
                    url: cfg.auth_jwks_url.clone(),
                    client: reqwest::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .map_err(|e| AuthError::Config(format!("http client: {e}")))?,
                    max_age: Duration::from_secs(cfg.auth_jwks_refresh_s.max(10)),
                    min_refetch: Duration::from_secs(cfg.auth_jwks_min_refetch_s),
                    state: RwLock::new(JwksState::default()),
                };
                jwks.refresh().await?;
                Keys::Jwks(jwks)
            }
            (true, true) => {
                return Err(AuthError::Config(
                    "set auth_key_file (GMMAS_AUTH_KEY_FILE) for GMMAS-issued tokens or auth_jwks_url \
                     (GMMAS_AUTH_JWKS_URL) for the hospital's identity provider"
                        .into(),
                ));
            }
            (false, false) => {
                return Err(AuthError::Config("set only one of auth_key_file and auth_jwks_url".into()));
            }
        };
        Ok(Verifier { cfg: Arc::new(cfg.clone()), keys: Arc::new(keys) })
    }

    /// Verifies `token` (signature, `exp`, `nbf`, `iss`, `aud`) and reads its subject, tenant and roles.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let (key, alg) = match &*self.keys {
            Keys::Shared(k) => (k.clone(), Algorithm::HS256),
            Keys::Jwks(j) => j.key(header.kid.as_deref()).await?,
        };
        if header.alg != alg {
            return Err(AuthError::Invalid(format!("algorithm {:?} is not accepted (expected {alg:?})", header.alg)));
        }
        let mut v = Validation::new(alg);
        v.leeway = self.cfg.auth_leeway_s;
        v.validate_nbf = true;
        v.set_issuer(&[&self.cfg.auth_issuer]);
        v.set_audience(&[&self.cfg.auth_audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            }
        })?;
        identity_from_claims(&data.claims, &self.cfg)
    }
}

/// Subject, tenant and roles from verified claims, by the configured claim names.
fn identity_from_claims(claims: &Map<String, Value>, cfg: &AuthConfig) -> Result<Identity, AuthError> {
    let claim_err =
        |claim: &str, reason: &str| AuthError::Claim { claim: claim.to_string(), reason: reason.to_string() };
    let subject = claims.get("sub").and_then(Value::as_str).filter(|s| !s.is_empty());
    let subject = subject.ok_or_else(|| claim_err("sub", "expected a non-empty string"))?;
    let tc = &cfg.auth_tenant_claim;
    let tenant = claims.get(tc).and_then(Value::as_str).ok_or_else(|| claim_err(tc, "expected a string"))?;
    let tenant = TenantId::new(tenant).map_err(|e| claim_err(tc, &e.to_string()))?;
    let rc = &cfg.auth_role_claim;
    let names: Vec<&str> = match claims.get(rc) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => return Err(claim_err(rc, "expected a role name or an array of role names")),
    };
    // Names that are not GMMAS roles (an identity provider's other groups) are ignored.
    let roles: BTreeSet<Role> = names.into_iter().filter_map(Role::parse).collect();
    if roles.is_empty() {
        return Err(claim_err(rc, "no GMMAS role (clinician, ml-engineer or admin)"));
    }
    Ok(Identity { subject: subject.to_string(), tenant, roles })
}

impl Jwks {
    async fn key(&self, kid: Option<&str>) -> Result<(DecodingKey, Algorithm), AuthError> {
        let kid = kid.ok_or_else(|| AuthError::Invalid("token header has no `kid`".into()))?;
        let stale = {
            let s = self.state.read().await;
            if let Some(k) = s.keys.get(kid)
                && s.fetched.is_some_and(|t| t.elapsed() < self.max_age)
            {
                return Ok(k.clone());
            }
            s.fetched.is_none_or(|t| t.elapsed() >= self.min_refetch)
        };
        if stale {
            // A new key id (rotation) or an old set: fetch again; keep the old keys if that fails.
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "jwks refresh failed");
            }
        }
        let s = self.state.read().await;
        s.keys.get(kid).cloned().ok_or_else(|| AuthError::Invalid(format!("unknown signing key id {kid:?}")))
    }

    async fn refresh(&self) -> Result<(), AuthError> {
        let err = |e: String| AuthError::Keys(format!("{}: {e}", self.url));
        let resp = self.client.get(&self.url).send().await.map_err(|e| err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(err(format!("HTTP {}", resp.status())));
        }
        let set: JwkSet = resp.json().await.map_err(|e| err(format!("not a JWKS: {e}")))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            let alg = match jwk.common.key_algorithm.map(|a| a.to_string()) {
                Some(a) => a.parse::<Algorithm>().ok(),
                None => default_alg(&jwk.algorithm),
            };
            let (Some(alg), Ok(key)) = (alg, DecodingKey::from_jwk(jwk)) else { continue };
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                continue; // a published symmetric key would let anyone sign
            }
            keys.insert(kid, (key, alg));
        }
        if keys.is_empty() {
            return Err(err("no usable signing key (asymmetric, with a key id)".into()));
        }
        let mut s = self.state.write().await;
        s.keys = keys;
        s.fetched = Some(Instant::now());
        Ok(())
    }
}

fn default_alg(params: &jsonwebtoken::jwk::AlgorithmParameters) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    match params {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &std::path::Path, key: &str) -> AuthConfig {
        let p = dir.join("jwt.key");
        std::fs::write(&p, key).unwrap();
        AuthConfig { auth_key_file: p.display().to_string(), ..AuthConfig::default() }
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef-test";

    #[tokio::test]
    async fn issued_tokens_verify_and_carry_tenant_and_role() {
        let d = tempfile::tempdir().unwrap();
        let cfg = key_file(d.path(), KEY);
        let v = Verifier::from_config(&cfg).await.unwrap();
        let t = TenantId::new("hospital-a").unwrap();
        let tok = issue(KEY.as_bytes(), &cfg, "dr-x", &t, Role::Clinician, Duration::from_secs(60)).unwrap();
        let id = v.verify(&tok).await.unwrap();
        assert_eq!(id.tenant, t);
        assert_eq!(id.subject, "dr-x");
        assert!(id.has(Role::Clinician) && !id.has(Role::Admin));
    }

    #[tokio::test]
    async fn wrong_key_expired_and_foreign_audience_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let cfg = key_file(d.path(), KEY);
        let v = Verifier::from_config(&cfg).await.unwrap();
        let t = TenantId::new("hospital-a").unwrap();
        let other = "another-secret-that-is-long-enough-000";
        let tok = issue(other.as_bytes(), &cfg, "x", &t, Role::Admin, Duration::from_secs(60)).unwrap();
        assert!(matches!(v.verify(&tok).await, Err(AuthError::Invalid(_))));
        let mut claims = Claims {
            sub: "x".into(),
            tenant: "hospital-a".into(),
            role: "clinician".into(),
            iss: "gmmas".into(),
            aud: "gmmas-api".into(),
            iat: 0,
            exp: unix_now() - 3600,
            jti: "j".into(),
        };
        let enc = |c: &Claims| sign(KEY.as_bytes(), c).unwrap();
        assert!(matches!(v.verify(&enc(&claims)).await, Err(AuthError::Expired)));
        claims.exp = unix_now() + 3600;
        claims.aud = "someone-else".into();
        assert!(matches!(v.verify(&enc(&claims)).await, Err(AuthError::Invalid(_))));
        claims.aud = "gmmas-api".into();
        claims.role = "superuser".into();
        assert!(matches!(v.verify(&enc(&claims)).await, Err(AuthError::Claim { .. })));
        claims.role = "clinician".into();
        claims.tenant = "../etc".into();
        assert!(matches!(v.verify(&enc(&claims)).await, Err(AuthError::Claim { .. })));
        // An unsigned token (`alg: none`) with otherwise valid claims is not accepted.
        let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4IiwidGVuYW50IjoiaG9zcGl0YWwtYSIsInJvbGUiOiJhZG1pbiIsImlzcyI6ImdtbWFzIiwiYXVkIjoiZ21tYXMtYXBpIiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
        assert!(v.verify(unsigned).await.is_err());
    }

    #[tokio::test]
    async fn configuration_errors_name_the_setting() {
        let e = Verifier::from_config(&AuthConfig::default()).await.unwrap_err().to_string();
        assert!(e.contains("GMMAS_AUTH_KEY_FILE"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let e = Verifier::from_config(&key_file(d.path(), "short")).await.unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
    }

    /// An RSA key made by `openssl` and its public JWK with key id `kid`.
    fn rsa_key(dir: &std::path::Path, kid: &str) -> (EncodingKey, Value) {
        use base64::Engine;
        let pem = dir.join(format!("{kid}.pem"));
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).output().expect("openssl is installed");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let path = pem.to_str().unwrap();
        run(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path]);
        let modulus = run(&["rsa", "-in", path, "-noout", "-modulus"]);
        let n = hex::decode(modulus.trim().trim_start_matches("Modulus=")).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwk = serde_json::json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64.encode(n), "e": "AQAB"});
        (EncodingKey::from_rsa_pem(&std::fs::read(&pem).unwrap()).unwrap(), jwk)
    }

    fn rs256(key: &EncodingKey, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.to_string());
        jsonwebtoken::encode(&h, claims, key).unwrap()
    }

    /// A hospital's identity provider: RS256 tokens verify against its JWKS, a rotated key is
    /// fetched when a token names it, its own claim names are used, and an HS256 token signed
    /// with the public key (algorithm confusion) is refused.
    #[tokio::test]
    async fn jwks_tokens_verify_and_rotated_keys_are_fetched() {
        let d = tempfile::tempdir().unwrap();
        let (k1, j1) = rsa_key(d.path(), "k1");
        let (k2, j2) = rsa_key(d.path(), "k2");
        let served = Arc::new(std::sync::Mutex::new(serde_json::json!({ "keys": [j1.clone()] })));
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = {
            let (served, fetches) = (served.clone(), fetches.clone());
            axum::Router::new().route(
                "/jwks",
                axum::routing::get(move || {
                    fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = served.lock().unwrap().clone();
                    async move { axum::Json(body) }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let cfg = AuthConfig {
            auth_jwks_url: format!("http://{addr}/jwks"),
            auth_issuer: "https://idp.hospital.example".into(),
            auth_audience: "gmmas".into(),
            auth_tenant_claim: "hospital".into(),
            auth_role_claim: "groups".into(),
            auth_jwks_min_refetch_s: 0,
            ..AuthConfig::default()
        };
        let v = Verifier::from_config(&cfg).await.unwrap();
        let claims = serde_json::json!({
            "sub": "dr-y", "hospital": "h7", "groups": ["staff", "clinician"],
            "iss": "https://idp.hospital.example", "aud": "gmmas", "exp": unix_now() + 600,
        });
        let id = v.verify(&rs256(&k1, "k1", &claims)).await.unwrap();
        assert_eq!((id.tenant.as_str(), id.subject.as_str()), ("h7", "dr-y"));
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1, "cached keys are reused");
        // k2 is not published yet: refused; once published, a token naming it triggers a fetch.
        assert!(v.verify(&rs256(&k2, "k2", &claims)).await.is_err());
        served.lock().unwrap()["keys"] = serde_json::json!([j1, j2]);
        assert_eq!(v.verify(&rs256(&k2, "k2", &claims)).await.unwrap().subject, "dr-y");
        // Algorithm confusion: HS256 "signed" with the published modulus is not accepted.
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let confused = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(b"AQAB-public-material").unwrap());
        assert!(v.verify(&confused.unwrap()).await.is_err());
        // A wrong issuer is refused.
        let mut other = claims.clone();
        other["iss"] = "https://elsewhere.example".into();
        assert!(v.verify(&rs256(&k1, "k1", &other)).await.is_err());
        // A JWKS URL that does not answer fails at start-up, naming it.
        let bad = AuthConfig { auth_jwks_url: "http://127.0.0.1:9/jwks".into(), ..cfg.clone() };
        let e = Verifier::from_config(&bad).await.unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:9"), "{e}");
    }

    #[test]
    fn role_claims_may_be_arrays_with_foreign_groups() {
        let cfg = AuthConfig::default();
        let c: Map<String, Value> = serde_json::from_value(
            serde_json::json!({"sub": "u", "tenant": "h1", "role": ["staff", "ml-engineer", "clinician"]}),
        )
        .unwrap();
        let id = identity_from_claims(&c, &cfg).unwrap();
        assert_eq!(id.roles, BTreeSet::from([Role::Clinician, Role::MlEngineer]));
        assert_eq!(id.roles_text(), "clinician,ml-engineer");
    }
}
