//! Uploaded files spooled to disk as they arrive, so that an upload's memory is one chunk however
//! large it is; the size limit, sha256 and gzip magic are taken on the way; dropped = deleted.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Why a file could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("larger than the limit of {limit} bytes per file")]
    TooLarge { limit: u64 },
    #[error("could not write the upload to {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A file being received: bytes are appended chunk by chunk.
#[derive(Debug)]
pub struct Spooler {
    file: std::fs::File,
    path: tempfile::TempPath,
    dir: PathBuf,
    hasher: Sha256,
    size: u64,
    max_bytes: u64,
    head: Vec<u8>,
}

impl Spooler {
    /// Starts a new spool file in `dir` (created when missing) that refuses more than `max_bytes`.
    pub fn create(dir: &Path, max_bytes: u64) -> Result<Spooler, SpoolError> {
        let io = |source| SpoolError::Io { dir: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let (file, path) = tempfile::Builder::new().prefix("upload-").tempfile_in(dir).map_err(io)?.into_parts();
        Ok(Spooler {
            file,
            path,
            dir: dir.to_path_buf(),
            hasher: Sha256::new(),
            size: 0,
            max_bytes,
            head: Vec::with_capacity(2),
        })
    }

    /// Appends one chunk (a blocking write of at most one chunk: small, and to local disk).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        self.size += chunk.len() as u64;
        if self.size > self.max_bytes {
            return Err(SpoolError::TooLarge { limit: self.max_bytes });
        }
        if self.head.len() < 2 {
            let take = (2 - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).map_err(|source| SpoolError::Io { dir: self.dir.clone(), source })
    }

    /// The complete file.
    pub fn finish(mut self) -> Result<Spooled, SpoolError> {
        self.file.flush().map_err(|source| SpoolError::Io { dir: self.dir.clone(), source })?;
        Ok(Spooled {
            path: self.path,
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
            gzip: self.head == [0x1f, 0x8b],
        })
    }
}

/// One received file on disk, deleted when dropped.
#[derive(Debug)]
pub struct Spooled {
    path: tempfile::TempPath,
    /// Its length in bytes.
    pub size: u64,
    /// Its sha256, lowercase hex.
    pub sha256: String,
    /// Whether it starts with the gzip magic bytes.
    pub gzip: bool,
}

impl Spooled {
    /// Spools bytes that are already in memory (tools and tests).
    pub fn from_bytes(dir: &Path, bytes: &[u8]) -> Result<Spooled, SpoolError> {
        let mut s = Spooler::create(dir, u64::MAX)?;
        for chunk in bytes.chunks(1 << 20) {
            s.push(chunk)?;
        }
        s.finish()
    }

    /// Where the bytes are.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_sizes_and_limits_what_it_spools() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spooler::create(dir.path(), 10).unwrap();
        s.push(&[0x1f]).unwrap();
        s.push(&[0x8b, 1, 2]).unwrap();
        let done = s.finish().unwrap();
        assert_eq!(done.size, 4);
        assert!(done.gzip);
        assert_eq!(done.sha256, hex::encode(Sha256::digest([0x1f, 0x8b, 1, 2])));
        assert_eq!(std::fs::read(done.path()).unwrap(), vec![0x1f, 0x8b, 1, 2]);
        let path = done.path().to_path_buf();
        drop(done);
        assert!(!path.exists(), "a dropped spool file is deleted");

        let mut s = Spooler::create(dir.path(), 10).unwrap();
        s.push(&[0; 8]).unwrap();
        assert!(matches!(s.push(&[0; 3]), Err(SpoolError::TooLarge { limit: 10 })));
        drop(s);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a refused upload leaves no file");
    }
}
