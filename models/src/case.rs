//! One prepared case through the model and back onto the input grid: segmentation and
//! uncertainty as NIfTI, region volumes and task probabilities (for infer and `gmmas analyze`).

use std::time::Instant;

use gmmas_imaging::{PreparedCase, RegionVolumes};

use crate::{Analyzer, InferOptions, ModelError, TaskProbabilities};

/// What one analysis produced, on the input grid.
#[derive(Debug, Clone)]
pub struct CaseAnalysis {
    /// BraTS labels (0, 1, 2, 4) as gzipped NIfTI on the input grid.
    pub seg_nifti: Vec<u8>,
    /// Sub-region volumes of that segmentation.
    pub regions: RegionVolumes,
    /// Task probabilities (mean over MC passes when they ran).
    pub probabilities: TaskProbabilities,
    /// Std of each probability over MC-Dropout passes (when more than one pass ran).
    pub probabilities_std: Option<TaskProbabilities>,
    /// Per-voxel uncertainty (std of the tumour probability) as float32 NIfTI on the input grid.
    pub uncertainty_nifti: Option<Vec<u8>>,
    /// Mean per-voxel uncertainty inside the predicted whole tumour.
    pub mean_uncertainty_wt: Option<f32>,
    /// Milliseconds of network inference (restoring and writing excluded).
    pub inference_ms: u128,
}

/// Runs `model` on a prepared case and maps the result back to the case's input grid.
pub fn analyze_prepared(
    model: &Analyzer,
    case: &PreparedCase,
    opts: &InferOptions,
) -> Result<CaseAnalysis, ModelError> {
    let started = Instant::now();
    let pred = model.analyze(&case.data, case.dims, case.present, opts)?;
    let inference_ms = started.elapsed().as_millis();
    let seg = gmmas_imaging::restore_labels(&pred.labels, &case.geometry);
    let (uncertainty_nifti, mean_uncertainty_wt) = match &pred.uncertainty {
        Some(u) => {
            let (sum, n) = u
                .iter()
                .zip(&pred.labels)
                .filter(|(_, l)| **l != 0)
                .fold((0.0f64, 0usize), |(s, n), (v, _)| (s + f64::from(*v), n + 1));
            let map = gmmas_imaging::restore_map(u, &case.geometry);
            (Some(gmmas_imaging::write_volume(&map, true)), (n > 0).then(|| (sum / n as f64) as f32))
        }
        None => (None, None),
    };
    Ok(CaseAnalysis {
        regions: gmmas_imaging::region_stats(&seg),
        seg_nifti: gmmas_imaging::write_labels(&seg, true),
        probabilities: pred.probabilities,
        probabilities_std: pred.task_std,
        uncertainty_nifti,
        mean_uncertainty_wt,
        inference_ms,
    })
}
