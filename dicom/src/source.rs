//! Where a study's files come from: a folder (walked recursively) or a zip archive, read with
//! limits on the number of files and bytes; files that are not DICOM are listed, not fatal.

use crate::error::DicomError;
use std::io::Read;
use std::path::Path;

/// Limits on what one study may hold.
#[derive(Clone, Copy, Debug)]
pub struct SourceLimits {
    /// Most files (entries) read.
    pub max_files: usize,
    /// Most bytes read in all (uncompressed).
    pub max_bytes: u64,
}

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits { max_files: 20_000, max_bytes: 4 * 1024 * 1024 * 1024 }
    }
}

/// One file of the study: its path inside the folder or archive, and its bytes.
pub struct RawFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// True when `path` is a zip archive (by its first bytes).
pub fn is_zip(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == *b"PK\x03\x04"
}

/// Every file under `dir` (recursively, in path order; hidden files and folders skipped).
pub fn read_dir(dir: &Path, limits: &SourceLimits) -> Result<Vec<RawFile>, DicomError> {
    let mut paths = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| DicomError::io(&d, e))? {
            let entry = entry.map_err(|e| DicomError::io(&d, e))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type().map_err(|e| DicomError::io(&path, e))?;
            if kind.is_dir() {
                todo.push(path);
            } else if kind.is_file() {
                paths.push(path);
            }
        }
    }
    paths.sort();
    if paths.len() > limits.max_files {
        return Err(DicomError::Study(format!(
            "{} files in {}: expected at most {}",
            paths.len(),
            dir.display(),
            limits.max_files
        )));
    }
    let mut total = 0u64;
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let bytes = std::fs::read(&p).map_err(|e| DicomError::io(&p, e))?;
        total += bytes.len() as u64;
        if total > limits.max_bytes {
            return Err(DicomError::Study(format!("the study is larger than {} bytes", limits.max_bytes)));
        }
        let name = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
        out.push(RawFile { name, bytes });
    }
    Ok(out)
}

/// Every file in the zip archive `bytes` (named `label` in errors); folders and hidden entries skipped.
pub fn read_zip(label: &str, bytes: &[u8], limits: &SourceLimits) -> Result<Vec<RawFile>, DicomError> {
    let zip_err = |detail: String| DicomError::Zip { path: label.to_string(), detail };
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| zip_err(e.to_string()))?;
    if archive.len() > limits.max_files {
        return Err(zip_err(format!("{} entries: expected at most {}", archive.len(), limits.max_files)));
    }
    let mut total = 0u64;
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| zip_err(format!("entry {i}: {e}")))?;
        let name = entry.name().to_string();
        let hidden = name.split('/').any(|part| part.starts_with('.') || part == "__MACOSX");
        if entry.is_dir() || hidden {
            continue;
        }
        // The declared size is checked first, then the bytes actually inflated (a lying header).
        if total + entry.size() > limits.max_bytes {
            return Err(zip_err(format!("uncompressed content exceeds {} bytes", limits.max_bytes)));
        }
        let mut buf = Vec::with_capacity(entry.size().min(64 << 20) as usize);
        let room = limits.max_bytes - total;
        (&mut entry).take(room + 1).read_to_end(&mut buf).map_err(|e| zip_err(format!("{name}: {e}")))?;
        total += buf.len() as u64;
        if total > limits.max_bytes {
            return Err(zip_err(format!("uncompressed content exceeds {} bytes", limits.max_bytes)));
        }
        out.push(RawFile { name, bytes: buf });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The files of a study at `path`: a folder, or a zip archive.
pub fn read_study_files(path: &Path, limits: &SourceLimits) -> Result<Vec<RawFile>, DicomError> {
    if path.is_dir() {
        read_dir(path, limits)
    } else if is_zip(path) {
        let bytes = std::fs::read(path).map_err(|e| DicomError::io(path, e))?;
        read_zip(&path.display().to_string(), &bytes, limits)
    } else {
        Err(DicomError::Study(format!("{}: expected a folder of DICOM files or a zip archive of one", path.display())))
    }
}

/// True when some file under `dir` (looked at up to 10 000 entries) has the DICOM magic code.
pub fn holds_dicom(dir: &Path) -> bool {
    let mut todo = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            seen += 1;
            if seen > 10_000 {
                return false;
            }
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            let mut head = [0u8; 132];
            if std::fs::File::open(&path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head[128..] == b"DICM" {
                return true;
            }
        }
    }
    false
}
