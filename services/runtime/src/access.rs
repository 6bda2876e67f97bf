//! Who may reach which HTTP route: one access rule per path (role, and a tenant path that must be
//! the token's own), the `Host` check, and an append-only audit row for every API request.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gmmas_contracts::TenantId;
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::{AuthConfig, AuthError, Identity, Role, Verifier};
use crate::http::ApiError;

/// The header carrying a request's id (taken from the caller when well-formed, else generated).
pub const REQUEST_ID: &str = "x-request-id";

/// What a path requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// No token: health, readiness, the OpenAPI document, the viewer's static files.
    Public,
    /// A token with one of the roles whose tenant is the tenant named in the path.
    Tenant { tenant: String, roles: &'static [Role] },
    /// A token with one of the roles (routes not about one tenant's cases).
    Global { roles: &'static [Role] },
    /// No such route.
    Unknown,
}

const CLINICAL: &[Role] = &[Role::Clinician];
const AUDIT_READERS: &[Role] = &[Role::Clinician, Role::Admin];
const ML: &[Role] = &[Role::MlEngineer];
const ADMIN: &[Role] = &[Role::Admin];

/// The access rule of `path` (default deny: a path not listed is `Unknown`).
pub fn rule(path: &str) -> Rule {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    // The API serves its routes under `/api`; the ingest service serves the upload route bare.
    let api = match segs.as_slice() {
        ["api", rest @ ..] => rest,
        other => other,
    };
    match api {
        [] | ["healthz"] | ["readyz"] | ["viewer", ..] => Rule::Public,
        ["v1", "openapi.json"] => Rule::Public,
        ["metrics"] => Rule::Global { roles: ML },
        ["v1", "tenants", t, "audit"] => Rule::Tenant { tenant: (*t).to_string(), roles: AUDIT_READERS },
        ["v1", "tenants", t, "cases", ..] => Rule::Tenant { tenant: (*t).to_string(), roles: CLINICAL },
        ["v1", "models", ..] | ["v1", "training", ..] => Rule::Global { roles: ML },
        ["v1", "admin", ..] => Rule::Global { roles: ADMIN },
        _ => Rule::Unknown,
    }
}

/// The guard's state: the verifier, the audit database and the accepted hosts.
#[derive(Clone)]
pub struct Access {
    verifier: Verifier,
    db: PgPool,
    hosts: Arc<Vec<String>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").field("verifier", &self.verifier).field("hosts", &self.hosts).finish()
    }
}

impl Access {
    /// Builds the guard of a listener bound to `http_addr`. Bound beyond loopback, the listener
    /// needs `allowed_hosts`, else this fails naming the setting.
    pub async fn new(cfg: &AuthConfig, http_addr: &str, db: PgPool) -> Result<Access, AuthError> {
        let loopback = http_addr
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().is_loopback())
            .unwrap_or_else(|_| http_addr.starts_with("localhost:"));
        if !loopback && cfg.allowed_hosts.is_empty() {
            return Err(AuthError::Config(format!(
                "the listener {http_addr} is bound beyond loopback: set allowed_hosts (GMMAS_ALLOWED_HOSTS, \
                 comma-separated host names the API is reached by)"
            )));
        }
        let verifier = Verifier::from_config(cfg).await?;
        Ok(Access { verifier, db, hosts: Arc::new(cfg.allowed_hosts.clone()) })
    }

    fn host_allowed(&self, host: Option<&HeaderValue>) -> bool {
        if self.hosts.is_empty() {
            return true;
        }
        let Some(host) = host.and_then(|h| h.to_str().ok()) else { return false };
        let name = host.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(host, |(n, _)| n);
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(name))
    }
}

/// The CORS layer of `cfg`: none when no origin is allowed (browsers then refuse cross-origin reads).
pub fn cors(cfg: &AuthConfig) -> Option<tower_http::cors::CorsLayer> {
    if cfg.cors_allowed_origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = cfg.cors_allowed_origins.iter().filter_map(|o| o.parse().ok()).collect();
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::PUT])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
    )
}

/// `router` behind the guard (and the CORS layer when origins are allowed): what a service
/// with a public HTTP API serves.
pub fn protect(router: axum::Router, access: Access, cfg: &AuthConfig) -> axum::Router {
    let router = router.layer(axum::middleware::from_fn_with_state(access, guard));
    match cors(cfg) {
        Some(c) => router.layer(c),
        None => router,
    }
}

/// The middleware: host check, token, rule, then the handler, then the audit row.
pub async fn guard(State(access): State<Access>, mut req: Request, next: Next) -> Response {
    if !access.host_allowed(req.headers().get(header::HOST)) {
        return ApiError::MisdirectedRequest("this server does not serve that host".into()).into_response();
    }
    let request_id = request_id(req.headers().get(REQUEST_ID));
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let rule = rule(&path);
    if rule == Rule::Public {
        return with_request_id(next.run(req).await, &request_id);
    }
    let identity = match &rule {
        Rule::Unknown => Err(ApiError::NotFound("no such route".into())),
        _ => match bearer(&req) {
            None => Err(ApiError::Unauthorized(AuthError::Missing.to_string())),
            Some(token) => match access.verifier.verify(token).await {
                Err(AuthError::Keys(e)) => {
                    tracing::error!(error = %e, "token keys unavailable");
                    Err(ApiError::Unavailable("token verification is unavailable".into()))
                }
                Err(e) => Err(ApiError::Unauthorized(e.to_string())),
                Ok(id) => Ok(id),
            },
        },
    };
    let (response, identity) = match identity {
        Ok(id) => match authorize(&rule, &id) {
            Ok(()) => {
                req.extensions_mut().insert(id.clone());
                (next.run(req).await, Some(id))
            }
            Err(e) => (e.into_response(), Some(id)),
        },
        Err(e) => (e.into_response(), None),
    };
    let status = response.status();
    let audited = audit(&access.db, &method, &path, &rule, identity.as_ref(), status, &request_id).await;
    let response = match audited {
        Ok(()) => response,
        Err(e) => {
            tracing::error!(error = %e, request_id, "writing the audit row failed");
            if method == Method::GET && status.is_success() {
                // A read that cannot be audited is not served.
                ApiError::Unavailable("audit log unavailable".into()).into_response()
            } else {
                response
            }
        }
    };
    with_request_id(response, &request_id)
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Another tenant's path looks exactly like a missing case (404), so ids cannot be probed.
fn authorize(rule: &Rule, id: &Identity) -> Result<(), ApiError> {
    let roles = match rule {
        Rule::Tenant { tenant, roles } => {
            if tenant != id.tenant.as_str() {
                return Err(ApiError::NotFound("not found".into()));
            }
            roles
        }
        Rule::Global { roles } => roles,
        Rule::Public | Rule::Unknown => return Ok(()),
    };
    if roles.iter().any(|r| id.has(*r)) {
        Ok(())
    } else {
        let need: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Err(ApiError::Forbidden(format!("this route needs the role {}", need.join(" or "))))
    }
}

fn request_id(given: Option<&HeaderValue>) -> String {
    given
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map_or_else(|| Uuid::new_v4().to_string(), str::to_string)
}

fn with_request_id(mut r: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        r.headers_mut().insert(REQUEST_ID, v);
    }
    r
}

/// `GET /api/v1/tenants/{tenant}/cases/{id}`-style template of a path (ids and tenant replaced).
pub fn action(method: &Method, path: &str) -> String {
    let mut out = Vec::new();
    let mut prev = "";
    for seg in path.split('/') {
        let t = if prev == "tenants" {
            "{tenant}"
        } else if Uuid::parse_str(seg).is_ok() {
            "{id}"
        } else {
            seg
        };
        out.push(t);
        prev = seg;
    }
    format!("{method} {}", out.join("/"))
}

async fn audit(
    db: &PgPool,
    method: &Method,
    path: &str,
    rule: &Rule,
    id: Option<&Identity>,
    status: StatusCode,
    request_id: &str,
) -> sqlx::Result<()> {
    // The tenant whose data the request was about (the path's), else the caller's own; the
    // caller's tenant is kept in the detail, so another hospital's probes show in this trail.
    let tenant = match (rule, id) {
        (Rule::Tenant { tenant, .. }, _) => TenantId::new(tenant).ok().map(|t| t.to_string()),
        (_, Some(id)) => Some(id.tenant.to_string()),
        _ => None,
    };
    let detail = match id {
        Some(id) => serde_json::json!({ "via": "api", "caller_tenant": id.tenant.as_str() }),
        None => serde_json::json!({ "via": "api" }),
    };
    let case_id = path.split('/').find_map(|s| Uuid::parse_str(s).ok());
    sqlx::query(
        "INSERT INTO audit_log (actor, action, tenant_id, case_id, detail, outcome, request_id, roles)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id.map_or("anonymous", |i| i.subject.as_str()))
    .bind(action(method, path))
    .bind(tenant)
    .bind(case_id)
    .bind(detail)
    .bind(i32::from(status.as_u16()))
    .bind(request_id)
    .bind(id.map(Identity::roles_text))
    .execute(db)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_route_family_has_its_rule() {
        assert_eq!(rule("/healthz"), Rule::Public);
        assert_eq!(rule("/viewer/app.js"), Rule::Public);
        assert_eq!(rule("/api/v1/openapi.json"), Rule::Public);
        assert_eq!(rule("/metrics"), Rule::Global { roles: ML });
        assert_eq!(rule("/api/v1/tenants/h1/cases"), Rule::Tenant { tenant: "h1".into(), roles: CLINICAL });
        assert_eq!(rule("/api/v1/tenants/h1/cases/x/labels"), Rule::Tenant { tenant: "h1".into(), roles: CLINICAL });
        assert_eq!(rule("/v1/tenants/h1/cases"), Rule::Tenant { tenant: "h1".into(), roles: CLINICAL });
        assert_eq!(rule("/api/v1/tenants/h1/audit"), Rule::Tenant { tenant: "h1".into(), roles: AUDIT_READERS });
        assert_eq!(rule("/api/v1/models/complete/rollback"), Rule::Global { roles: ML });
        assert_eq!(rule("/api/v1/admin/tenants"), Rule::Global { roles: ADMIN });
        assert_eq!(rule("/api/v1/tenants/h1"), Rule::Unknown);
        assert_eq!(rule("/api/v2/anything"), Rule::Unknown);
        assert_eq!(rule("/api/v1/tenants"), Rule::Unknown);
    }

    fn who(tenant: &str, roles: &[Role]) -> Identity {
        Identity {
            subject: "u".into(),
            tenant: TenantId::new(tenant).unwrap(),
            roles: roles.iter().copied().collect::<BTreeSet<_>>(),
        }
    }

    #[test]
    fn another_tenant_is_not_found_and_a_missing_role_is_forbidden() {
        let r = rule("/api/v1/tenants/h1/cases");
        assert!(authorize(&r, &who("h1", &[Role::Clinician])).is_ok());
        assert!(matches!(authorize(&r, &who("h2", &[Role::Clinician])), Err(ApiError::NotFound(_))));
        assert!(matches!(authorize(&r, &who("h1", &[Role::MlEngineer])), Err(ApiError::Forbidden(_))));
        let m = rule("/api/v1/models");
        assert!(matches!(authorize(&m, &who("h1", &[Role::Clinician])), Err(ApiError::Forbidden(_))));
        assert!(authorize(&m, &who("h9", &[Role::MlEngineer])).is_ok());
        let a = rule("/api/v1/tenants/h1/audit");
        assert!(authorize(&a, &who("h1", &[Role::Admin])).is_ok());
        assert!(matches!(authorize(&a, &who("h2", &[Role::Admin])), Err(ApiError::NotFound(_))));
    }

    #[test]
    fn actions_hide_ids_and_request_ids_are_sanitised() {
        let id = Uuid::new_v4();
        assert_eq!(
            action(&Method::GET, &format!("/api/v1/tenants/h1/cases/{id}/segmentation")),
            "GET /api/v1/tenants/{tenant}/cases/{id}/segmentation"
        );
        assert_eq!(request_id(Some(&HeaderValue::from_static("abc-123"))), "abc-123");
        let generated = request_id(Some(&HeaderValue::from_static("a b; drop")));
        assert!(Uuid::parse_str(&generated).is_ok());
    }
}
