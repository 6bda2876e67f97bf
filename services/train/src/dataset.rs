//! The data of a training run: the manifest of curated cases (inputs, the label that wins —
//! a clinician's over an accepted pseudo-label — and their hashes), its sha256 (the snapshot
//! the candidate records), and its materialisation as BraTS-style folders for the trainer.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use gmmas_contracts::{self as contracts, ObjectRef};
use gmmas_imaging::brats::CaseLabels;
use gmmas_runtime::bus::Bus;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// One curated case as a run trains on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestCase {
    pub case_id: Uuid,
    /// Input volumes by modality.
    pub volumes: Vec<(String, ObjectRef)>,
    /// Segmentation (BraTS labels, 255 = no supervision), when one is known.
    pub seg: Option<ObjectRef>,
    /// `clinician` or `pseudo:<model version>`.
    pub seg_source: Option<String>,
    /// Class labels (grade, IDH, 1p/19q, MGMT); None = unknown.
    pub tasks: [Option<bool>; 4],
}

/// The whole data snapshot of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub cases: Vec<ManifestCase>,
}

impl Manifest {
    /// sha256 of the canonical JSON (cases sorted by id).
    pub fn sha256(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }
}

/// Reads the curated cases: every case with a clinician's label or an accepted pseudo-label
/// that is not stale; a clinician's segmentation and class labels win over pseudo-labels.
pub async fn current_manifest(db: &PgPool) -> anyhow::Result<Manifest> {
    type Row = (Uuid, Option<String>, Option<String>, Option<bool>, Option<bool>, Option<bool>, Option<bool>);
    let clinician: Vec<Row> = sqlx::query_as(
        "SELECT case_id, seg_object_key, seg_sha256, grade_gbm, idh_mutant, codel_1p19q, mgmt_methylated
         FROM clinician_labels",
    )
    .fetch_all(db)
    .await?;
    type Pseudo = (Uuid, String, String, Option<bool>, Option<String>, Option<String>);
    let pseudo: Vec<Pseudo> = sqlx::query_as(
        "SELECT p.case_id, p.task, p.model_version, p.label, p.seg_object_key, p.seg_sha256
         FROM pseudo_labels p JOIN cases c ON c.id = p.case_id
         WHERE p.accepted AND NOT p.stale AND c.status = 'done'
         ORDER BY p.created_at",
    )
    .fetch_all(db)
    .await?;
    let mut cases: BTreeMap<Uuid, ManifestCase> = BTreeMap::new();
    let blank = |case_id| ManifestCase { case_id, volumes: Vec::new(), seg: None, seg_source: None, tasks: [None; 4] };
    for (case_id, task, version, label, key, sha) in pseudo {
        let c = cases.entry(case_id).or_insert_with(|| blank(case_id));
        if task == "segmentation" {
            if let (Some(key), Some(sha)) = (key, sha) {
                c.seg = Some(object(key, sha));
                c.seg_source = Some(format!("pseudo:{version}"));
            }
        } else if let Some(t) = crate::gate::TASKS.iter().position(|x| *x == task) {
            c.tasks[t] = label;
        }
    }
    for (case_id, key, sha, g, i, c1, m) in clinician {
        let c = cases.entry(case_id).or_insert_with(|| blank(case_id));
        if let (Some(key), Some(sha)) = (key, sha) {
            c.seg = Some(object(key, sha));
            c.seg_source = Some("clinician".into());
        }
        for (t, v) in [g, i, c1, m].into_iter().enumerate() {
            if v.is_some() {
                c.tasks[t] = v;
            }
        }
    }
    for c in cases.values_mut() {
        let vols: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT modality, object_key, sha256, size_bytes FROM volumes WHERE case_id = $1 ORDER BY modality",
        )
        .bind(c.case_id)
        .fetch_all(db)
        .await?;
        c.volumes = vols
            .into_iter()
            .map(|(m, key, sha256, size)| {
                (m, ObjectRef { bucket: contracts::VOLUMES_BUCKET.into(), key, sha256, size: size.max(0) as u64 })
            })
            .collect();
    }
    Ok(Manifest { cases: cases.into_values().filter(|c| !c.volumes.is_empty()).collect() })
}

fn object(key: String, sha256: String) -> ObjectRef {
    ObjectRef { bucket: contracts::VOLUMES_BUCKET.into(), key, sha256, size: 0 }
}

/// Writes the manifest as case folders `<dir>/<case>/<case>_<modality>.nii(.gz)` (+ `_seg`)
/// and `<dir>/labels.csv`; every object is checked against its sha256.
pub async fn materialize(bus: &Bus, manifest: &Manifest, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut labels = BTreeMap::new();
    for c in &manifest.cases {
        let name = c.case_id.simple().to_string();
        let case_dir = dir.join(&name);
        std::fs::create_dir_all(&case_dir)?;
        for (modality, obj) in &c.volumes {
            let bytes = bus.get_object(obj).await.with_context(|| format!("input {modality} of a curated case"))?;
            let ext = if obj.key.ends_with(".gz") { "nii.gz" } else { "nii" };
            std::fs::write(case_dir.join(format!("{name}_{modality}.{ext}")), bytes)?;
        }
        if let Some(seg) = &c.seg {
            let bytes = bus.get_object(seg).await.context("segmentation of a curated case")?;
            std::fs::write(case_dir.join(format!("{name}_seg.nii.gz")), bytes)?;
        }
        let [grade_gbm, idh_mutant, codel_1p19q, mgmt_methylated] = c.tasks;
        labels.insert(name, CaseLabels { grade_gbm, idh_mutant, codel_1p19q, mgmt_methylated });
    }
    gmmas_imaging::brats::write_labels_csv(&dir.join("labels.csv"), &labels)?;
    Ok(())
}
