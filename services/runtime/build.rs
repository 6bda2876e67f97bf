//! Rebuilds the runtime (and so every service) when a migration is added, since
//! `sqlx::migrate!` embeds the folder's contents at compile time.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
