//! `gmmas models list|rollback`: the model registry from the command line (the database named
//! by `GMMAS_DATABASE_URL`); a rollback is one transaction that also announces `model.promoted`.

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Every registered model: role, status, parent, data snapshot and the gate's decision.
    List,
    /// Make the model that the current one replaced current again; the rolled-back model's
    /// pseudo-labels are marked stale.
    Rollback {
        /// `complete` or `incomplete`.
        #[arg(long, default_value = "complete")]
        role: String,
    },
}

fn database_url() -> String {
    std::env::var("GMMAS_DATABASE_URL").unwrap_or_else(|_| gmmas_runtime::CommonConfig::default().database_url)
}

pub async fn run(cmd: ModelsCommand) -> anyhow::Result<()> {
    let url = database_url();
    let db = gmmas_runtime::db::connect_with(&url, std::time::Duration::from_secs(5), false).await?;
    match cmd {
        ModelsCommand::List => {
            println!("{:<36} {:<10} {:<11} {:<8} {:<36} decision", "version", "role", "status", "origin", "parent");
            for m in gmmas_runtime::registry::list(&db).await? {
                println!(
                    "{:<36} {:<10} {:<11} {:<8} {:<36} {}",
                    m.version,
                    m.role,
                    m.status,
                    m.origin,
                    m.parent_version.unwrap_or_default(),
                    m.decision.unwrap_or_default()
                );
            }
        }
        ModelsCommand::Rollback { role } => {
            let (from, to) = gmmas_runtime::registry::rollback(&db, &role, "cli")
                .await
                .with_context(|| format!("rolling back role {role}"))?;
            // The running services' relays publish `model.promoted`; infer switches on it.
            println!("role {role}: {from} rolled back; {to} is current");
        }
    }
    Ok(())
}
