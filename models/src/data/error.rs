//! Problems found while validating a dataset: each names the case and the file, and all of
//! them are reported together.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One problem found while validating the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseProblem {
    /// Case name (or the folder / file name when no case name is known).
    pub case: String,
    /// The offending file or folder.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for CaseProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "case {} ({}): {}", self.case, self.path.display(), self.message)
    }
}

/// Every problem of a dataset, reported at once.
#[derive(Debug, Clone, PartialEq)]
pub struct DataError {
    /// The problems, in case order.
    pub problems: Vec<CaseProblem>,
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} problem(s) in the training data (fix them, or set skip_bad_cases = true to \
             leave those cases out):",
            self.problems.len()
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DataError {}

pub(super) fn problem(case: &str, path: &Path, message: impl Into<String>) -> CaseProblem {
    CaseProblem { case: case.to_string(), path: path.to_path_buf(), message: message.into() }
}
