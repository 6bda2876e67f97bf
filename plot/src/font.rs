//! The one TrueType font chart text is drawn in: `GMMAS_FONT`, else DejaVu Sans or Liberation
//! Sans where Linux distributions install them; loaded once and registered with plotters.

use plotters::style::FontStyle;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Family name the charts ask plotters for.
pub(crate) const FAMILY: &str = "sans-serif";

const CANDIDATES: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Why chart text cannot be drawn.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FontError {
    /// No font file was found.
    #[error(
        "no font for chart text: set GMMAS_FONT to a .ttf file or install DejaVu Sans \
         (Debian package fonts-dejavu-core); looked at {tried}"
    )]
    NotFound { tried: String },
    /// The font file exists but could not be read or is not a TrueType font.
    #[error("font {path}: {reason}")]
    Unreadable { path: String, reason: String },
}

/// The font file charts use: `GMMAS_FONT` when set (it must exist), else the first
/// well-known DejaVu / Liberation Sans path that exists.
pub fn font_path() -> Result<PathBuf, FontError> {
    if let Some(p) = std::env::var_os("GMMAS_FONT") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(FontError::NotFound { tried: format!("GMMAS_FONT={} (no such file)", p.display()) })
        };
    }
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| FontError::NotFound { tried: CANDIDATES.join(", ") })
}

/// Loads and registers the font once per process; later calls return the first outcome.
pub(crate) fn ensure_registered() -> Result<(), FontError> {
    static DONE: OnceLock<Result<(), FontError>> = OnceLock::new();
    DONE.get_or_init(register).clone()
}

fn register() -> Result<(), FontError> {
    let path = font_path()?;
    let bad = |reason: String| FontError::Unreadable { path: path.display().to_string(), reason };
    let bytes = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
    // plotters keeps registered fonts for the life of the process; this happens once.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| bad("not a TrueType font".into()))
}
