//! `gmmas token issue` and `gmmas tenant create|list`: the administrator's side of the API's
//! access control on a standalone install (signing key from a file, tenants in the database).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use gmmas_contracts::TenantId;
use gmmas_runtime::auth::{self, AuthConfig, Role};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Sign a bearer token for the API and print it (nothing else on stdout).
    Issue {
        /// Tenant (hospital) the token is for.
        #[arg(long)]
        tenant: String,
        /// clinician, ml-engineer or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Who the token is for (a user or service name; not a patient identifier).
        #[arg(long, default_value = "cli")]
        subject: String,
        /// Lifetime, e.g. 30m, 8h, 7d.
        #[arg(long, default_value = "8h", value_parser = parse_ttl)]
        ttl: Duration,
        /// The HS256 signing key file the API verifies with.
        #[arg(long, env = "GMMAS_AUTH_KEY_FILE")]
        key_file: PathBuf,
        /// Expected `iss` of the API (its `auth_issuer`).
        #[arg(long, env = "GMMAS_AUTH_ISSUER", default_value = "gmmas")]
        issuer: String,
        /// Expected `aud` of the API (its `auth_audience`).
        #[arg(long, env = "GMMAS_AUTH_AUDIENCE", default_value = "gmmas-api")]
        audience: String,
    },
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (uploads to a tenant that does not exist are refused).
    Create {
        /// Tenant id: letters, digits, `-` and `_`.
        id: String,
    },
    /// List the tenants.
    List,
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("expected clinician, ml-engineer or admin, got {s:?}"))
}

/// `30s`, `45m`, `8h`, `7d` (at most 365 days).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: expected a number and a unit (s, m, h, d)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" | "" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unit {unit:?}; expected s, m, h or d")),
    };
    if secs == 0 || secs > 365 * 86_400 {
        return Err(format!("{s:?}: expected more than 0 and at most 365 days"));
    }
    Ok(Duration::from_secs(secs))
}

pub fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Issue { tenant, role, subject, ttl, key_file, issuer, audience } => {
            let t = TenantId::new(&tenant).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
            let key = auth::read_key_file(&key_file)?;
            let cfg = AuthConfig { auth_issuer: issuer, auth_audience: audience, ..AuthConfig::default() };
            println!("{}", auth::issue(&key, &cfg, &subject, &t, role, ttl)?);
            Ok(())
        }
    }
}

pub async fn tenant(cmd: TenantCommand) -> anyhow::Result<()> {
    let url =
        std::env::var("GMMAS_DATABASE_URL").unwrap_or_else(|_| gmmas_runtime::CommonConfig::default().database_url);
    let db = gmmas_runtime::db::connect_with(&url, Duration::from_secs(5), false).await?;
    match cmd {
        TenantCommand::Create { id } => {
            let t = TenantId::new(&id).map_err(|e| anyhow::anyhow!("tenant id: {e}"))?;
            let done = sqlx::query("INSERT INTO tenants (id, created_by) VALUES ($1, 'cli') ON CONFLICT DO NOTHING")
                .bind(t.as_str())
                .execute(&db)
                .await
                .context("creating the tenant")?;
            if done.rows_affected() == 0 {
                println!("tenant {t} exists already");
            } else {
                println!("tenant {t} created");
            }
        }
        TenantCommand::List => {
            let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> =
                sqlx::query_as("SELECT id, created_at FROM tenants ORDER BY id").fetch_all(&db).await?;
            for (id, at) in rows {
                println!("{id}\t{}", at.to_rfc3339());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("8h").unwrap(), Duration::from_secs(8 * 3600));
        assert_eq!(parse_ttl("2d").unwrap(), Duration::from_secs(2 * 86_400));
        assert!(parse_ttl("0h").is_err() && parse_ttl("5w").is_err() && parse_ttl("h").is_err());
        assert!(parse_ttl("400d").is_err());
    }
}
