//! Where an installed GMMAS keeps its read-only data (bundled models, configs, the anatomy
//! template): `GMMAS_SHARE_DIR`, else `share/gmmas` beside the executable's `bin/`.

use std::path::{Path, PathBuf};

/// The variable that names the data folder of an installation.
pub const SHARE_ENV: &str = "GMMAS_SHARE_DIR";

/// The installation's data folder: `GMMAS_SHARE_DIR` when set, else `<prefix>/share/gmmas` for
/// an executable in `<prefix>/bin` when that folder exists; None when running from a build tree.
pub fn share_dir() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os(SHARE_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(v));
    }
    let exe = std::env::current_exe().ok()?;
    beside_bin(&exe).filter(|d| d.is_dir())
}

/// `<prefix>/share/gmmas` for `<prefix>/bin/<exe>`.
fn beside_bin(exe: &Path) -> Option<PathBuf> {
    let bin = exe.parent()?;
    if bin.file_name()? != "bin" {
        return None;
    }
    Some(bin.parent()?.join("share").join("gmmas"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_folder_sits_beside_bin() {
        assert_eq!(beside_bin(Path::new("/opt/gmmas/bin/gmmas-infer")), Some(PathBuf::from("/opt/gmmas/share/gmmas")));
        assert_eq!(beside_bin(Path::new("/home/u/target/release/gmmas")), None);
    }
}
