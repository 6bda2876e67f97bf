//! Reading one dataset from disk: finding case folders, then reading, checking and preparing
//! each case, with every problem of a case collected.

use std::path::{Path, PathBuf};

use gmmas_imaging::brats::{CaseFiles, CaseLabels};
use gmmas_imaging::{Limits, Modality, PrepOptions};
use sha2::{Digest, Sha256};

use super::case::{CaseData, tumor_extent};
use super::error::{CaseProblem, problem};
use crate::config::TASKS;
use crate::partial::{SEG_IGNORE, SEG_TUMOUR, SegSupervision};
use crate::weights::sha256_hex;

/// Finds case folders: a folder with BraTS files is a case; otherwise each non-hidden
/// sub-folder is one.
pub(super) fn discover(dirs: &[PathBuf], problems: &mut Vec<CaseProblem>) -> Vec<(PathBuf, CaseFiles)> {
    let mut out = Vec::new();
    for dir in dirs {
        let label =
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string());
        if !dir.is_dir() {
            problems.push(problem(&label, dir, "data folder not found"));
            continue;
        }
        if let Ok(files) = gmmas_imaging::brats::discover_case(dir) {
            out.push((dir.clone(), files));
            continue;
        }
        let mut subs: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .collect(),
            Err(e) => {
                problems.push(problem(&label, dir, format!("cannot list folder: {e}")));
                continue;
            }
        };
        subs.sort();
        if subs.is_empty() {
            problems.push(problem(&label, dir, "no BraTS case here: expected case files or case sub-folders"));
        }
        for sub in subs {
            let name = sub.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match gmmas_imaging::brats::discover_case(&sub) {
                Ok(files) => out.push((sub, files)),
                Err(e) => problems.push(problem(&name, &sub, e.to_string())),
            }
        }
    }
    out
}

pub(super) fn tasks_of(l: &CaseLabels) -> [Option<bool>; TASKS] {
    [l.grade_gbm, l.idh_mutant, l.codel_1p19q, l.mgmt_methylated]
}

pub(super) struct LoadOptions<'a> {
    pub(super) require_seg: bool,
    pub(super) required: &'a [Modality],
    pub(super) max_voxels: Option<usize>,
    pub(super) limits: Limits,
}

/// Reads, checks and prepares one case; every problem found is returned.
// Long on purpose: one case's checks (files, headers, grids, labels, values) run in a row and each adds to the same problem list, so that a user sees every problem of a case at once.
pub(super) fn load_case(
    dir: &Path,
    files: &CaseFiles,
    opts: &LoadOptions<'_>,
) -> Result<(CaseData, Vec<String>), Vec<CaseProblem>> {
    let name = &files.name;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut hashes = Vec::new();
    for m in opts.required {
        if !files.modalities.iter().any(|(fm, _)| fm == m) {
            problems.push(problem(name, dir, format!("missing {} image (required_modalities)", m.as_str())));
        }
    }
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read: {e}"));
    let mut volumes = Vec::new();
    for (m, path) in &files.modalities {
        match read(path).and_then(|bytes| {
            let sha = sha256_hex(&bytes);
            gmmas_imaging::read_volume(&bytes, &opts.limits).map(|v| (v, sha)).map_err(|e| e.to_string())
        }) {
            Ok((v, sha)) => {
                hashes.push((m.as_str().to_string(), sha));
                volumes.push((*m, v, path.clone()));
            }
            Err(e) => problems.push(problem(name, path, e)),
        }
    }
    // A whole-tumour mask (`<case>_wt.nii.gz`) stands in for a missing segmentation: its
    // tumour voxels become SEG_TUMOUR targets (sub-region unknown).
    let wt_path = if files.seg.is_none() { whole_tumour_file(dir, name) } else { None };
    let seg = match &files.seg {
        None if wt_path.is_some() => {
            let path = wt_path.clone().unwrap_or_default();
            match read(&path).and_then(|bytes| {
                let sha = sha256_hex(&bytes);
                gmmas_imaging::read_labels(&bytes, &opts.limits).map(|v| (v, sha)).map_err(|e| e.to_string())
            }) {
                Ok((mut v, sha)) => {
                    hashes.push(("wt".to_string(), sha));
                    for x in &mut v.data {
                        *x = if *x != 0 { SEG_TUMOUR } else { 0 };
                    }
                    Some((v, path))
                }
                Err(e) => {
                    problems.push(problem(name, &path, e));
                    None
                }
            }
        }
        None if opts.require_seg => {
            problems.push(problem(
                name,
                dir,
                "no segmentation (<case>_seg.nii.gz or <case>-seg.nii.gz, or a whole-tumour <case>_wt.nii.gz)",
            ));
            None
        }
        None => None,
        Some(path) => match read(path).and_then(|bytes| {
            let sha = sha256_hex(&bytes);
            gmmas_imaging::brats::read_seg_brats(&bytes, &opts.limits).map(|v| (v, sha)).map_err(|e| e.to_string())
        }) {
            Ok((v, sha)) => {
                hashes.push(("seg".to_string(), sha));
                Some((v, path.clone()))
            }
            Err(e) => {
                problems.push(problem(name, path, e));
                None
            }
        },
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let Some((_, _, first_path)) = volumes.first() else {
        return Err(vec![problem(name, dir, "no image file")]);
    };
    let grid = &volumes[0].1.grid;
    for (m, v, path) in &volumes[1..] {
        if let Err(e) = gmmas_imaging::same_grid(grid, &v.grid) {
            problems.push(problem(
                name,
                path,
                format!("{} is not on the grid of {}: {e}", m.as_str(), first_path.display()),
            ));
        }
    }
    if let Some((s, path)) = &seg
        && let Err(e) = gmmas_imaging::same_grid(grid, &s.grid)
    {
        problems.push(problem(name, path, format!("segmentation is not on the grid of {}: {e}", first_path.display())));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let refs: Vec<(Modality, &gmmas_imaging::Volume)> = volumes.iter().map(|(m, v, _)| (*m, v)).collect();
    let mut popts = PrepOptions::default();
    let mut prepared = gmmas_imaging::prepare(&refs, &popts).map_err(|e| vec![problem(name, dir, e.to_string())])?;
    if let Some(max) = opts.max_voxels {
        let n: usize = prepared.dims.iter().product();
        if n > max && max > 0 {
            let factor = (n as f64 / max as f64).cbrt();
            popts.spacing_mm = ((popts.spacing_mm as f64 * factor * 10.0).ceil() / 10.0) as f32;
            prepared = gmmas_imaging::prepare(&refs, &popts).map_err(|e| vec![problem(name, dir, e.to_string())])?;
            warnings
                .push(format!("case {name}: {n} voxels > max_case_voxels {max}: prepared at {} mm", popts.spacing_mm));
        }
    }
    let g = &prepared.geometry;
    let spacing = if g.resampled { [g.spacing_mm; 3] } else { g.canonical_spacing };
    let voxels: usize = prepared.dims.iter().product();
    let seg_classes = match &seg {
        Some((s, path)) => {
            let l = gmmas_imaging::prepare_labels(s, g).map_err(|e| vec![problem(name, path, e.to_string())])?;
            if !g.resampled {
                let before = s.data.iter().filter(|&&v| v != 0).count();
                let after = l.iter().filter(|&&v| v != 0).count();
                if after < before {
                    warnings.push(format!(
                        "case {name}: {} tumour voxel(s) lie outside the brain crop and are \
                         not trained on",
                        before - after
                    ));
                }
            }
            let whole_tumour = wt_path.is_some();
            let mut out = Vec::with_capacity(l.len());
            for (i, v) in l.iter().enumerate() {
                out.push(match v {
                    0 => 0u8,
                    4 if whole_tumour => SEG_TUMOUR,
                    1 => 1,
                    2 => 2,
                    3 | 4 => 3,
                    // Pseudo-labels carry the voxels they did not accept as 255: no supervision.
                    &SEG_IGNORE => SEG_IGNORE,
                    other => {
                        return Err(vec![problem(
                            name,
                            path,
                            format!("label value {other} at prepared voxel {i}: expected 0, 1, 2, 4 (or 255, ignored)"),
                        )]);
                    }
                });
            }
            out
        }
        None => vec![SEG_IGNORE; voxels],
    };
    let supervision = SegSupervision::of(&seg_classes);
    let (tumor_bbox, tumor_voxels) = tumor_extent(&seg_classes, prepared.dims);
    let mut h = Sha256::new();
    for (role, sha) in &hashes {
        h.update(format!("{role}={sha}\n").as_bytes());
    }
    Ok((
        CaseData {
            name: name.clone(),
            dir: dir.to_path_buf(),
            dims: prepared.dims,
            spacing,
            present: prepared.present,
            image: prepared.data,
            seg: seg_classes,
            has_seg: seg.is_some() && wt_path.is_none() && supervision == SegSupervision::Full,
            supervision,
            tasks: [None; TASKS],
            tumor_bbox,
            tumor_voxels,
            file_sha256: hashes,
            sha256: hex::encode(h.finalize()),
        },
        warnings,
    ))
}

/// `<dir>/<name>_wt.nii.gz` (or `.nii`, or `-wt`) when it exists: a whole-tumour mask.
pub(super) fn whole_tumour_file(dir: &Path, name: &str) -> Option<PathBuf> {
    ["_wt.nii.gz", "_wt.nii", "-wt.nii.gz", "-wt.nii"]
        .iter()
        .map(|suffix| dir.join(format!("{name}{suffix}")))
        .find(|p| p.is_file())
}

pub(super) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
