//! BraTS dataset conventions: case-directory discovery (2018-2021 and 2023 naming), segmentation
//! label checks, parallel case loading and the per-case class-labels CSV.

use crate::error::ImagingError;
use crate::nifti::{read_labels, read_volume};
use crate::types::{LabelVolume, Limits, Modality, Volume};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files of one case found in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseFiles {
    /// Case name (the shared file prefix, else the directory name).
    pub name: String,
    /// Image files in [`Modality::index`] order.
    pub modalities: Vec<(Modality, PathBuf)>,
    pub seg: Option<PathBuf>,
}

/// `None` stands for the segmentation.
const SUFFIXES: [(&str, Option<Modality>); 10] = [
    ("_t1", Some(Modality::T1)),
    ("_t1ce", Some(Modality::T1ce)),
    ("_t2", Some(Modality::T2)),
    ("_flair", Some(Modality::Flair)),
    ("_seg", None),
    ("-t1n", Some(Modality::T1)),
    ("-t1c", Some(Modality::T1ce)),
    ("-t2w", Some(Modality::T2)),
    ("-t2f", Some(Modality::Flair)),
    ("-seg", None),
];

/// Splits a BraTS file name into (case prefix, role); None if it is not one.
fn classify(file_name: &str) -> Option<(String, Option<Modality>)> {
    let lower = file_name.to_ascii_lowercase();
    let stem_len = if lower.ends_with(".nii.gz") {
        lower.len() - 7
    } else if lower.ends_with(".nii") {
        lower.len() - 4
    } else {
        return None;
    };
    let stem = &lower[..stem_len];
    SUFFIXES.iter().find_map(|(suffix, role)| {
        (stem.ends_with(suffix) && stem.len() > suffix.len())
            .then(|| (file_name[..stem_len - suffix.len()].to_string(), *role))
    })
}

/// Finds `<prefix>_t1|_t1ce|_t2|_flair|_seg` or `<prefix>-t1n|-t1c|-t2w|-t2f|-seg` files
/// (`.nii` or `.nii.gz`) in `dir`. Any non-empty subset is accepted.
pub fn discover_case(dir: &Path) -> Result<CaseFiles, ImagingError> {
    let layout = |detail: String| ImagingError::Layout { dir: dir.display().to_string(), detail };
    let entries = std::fs::read_dir(dir).map_err(|e| ImagingError::io(dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ImagingError::io(dir, e))?;
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    let mut slots: [Option<String>; 5] = Default::default();
    let mut prefixes = Vec::new();
    for name in names {
        let Some((prefix, role)) = classify(&name) else {
            continue;
        };
        let slot = role.map_or(4, Modality::index);
        if let Some(prev) = &slots[slot] {
            let what = role.map_or("seg", Modality::as_str);
            return Err(layout(format!("both {prev} and {name} claim {what}: expected one file per modality")));
        }
        slots[slot] = Some(name);
        prefixes.push(prefix);
    }
    if prefixes.is_empty() {
        return Err(layout(
            "no BraTS image found: expected <case>_t1/_t1ce/_t2/_flair/_seg or <case>-t1n/-t1c/-t2w/-t2f/-seg with .nii or .nii.gz"
                .into(),
        ));
    }
    let name = if prefixes.iter().all(|p| *p == prefixes[0]) {
        prefixes[0].clone()
    } else {
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| prefixes[0].clone())
    };
    let modalities =
        Modality::ALL.iter().filter_map(|m| slots[m.index()].as_ref().map(|f| (*m, dir.join(f)))).collect();
    Ok(CaseFiles { name, modalities, seg: slots[4].as_ref().map(|f| dir.join(f)) })
}

/// Label value of a voxel that carries no supervision (a pseudo-label that was not accepted).
pub const UNLABELED: u8 = 255;

/// Reads a BraTS segmentation: labels must be in {0,1,2,3,4} (or [`UNLABELED`]); the 2023 ET
/// label 3 becomes 4.
pub fn read_seg_brats(bytes: &[u8], limits: &Limits) -> Result<LabelVolume, ImagingError> {
    let mut l = read_labels(bytes, limits)?;
    for (index, v) in l.data.iter_mut().enumerate() {
        match *v {
            0 | 1 | 2 | 4 | UNLABELED => {}
            3 => *v = 4,
            other => {
                return Err(ImagingError::LabelValue {
                    value: f64::from(other),
                    index,
                    expected: "one of 0, 1, 2, 3, 4 (BraTS labels) or 255 (no label)".into(),
                });
            }
        }
    }
    Ok(l)
}

/// A case read into memory.
#[derive(Clone, Debug)]
pub struct LoadedCase {
    pub name: String,
    pub volumes: Vec<(Modality, Volume)>,
    pub seg: Option<LabelVolume>,
}

/// Reads and decodes all files of a case concurrently (one scoped thread per file).
pub fn load_case(files: &CaseFiles, limits: &Limits) -> Result<LoadedCase, ImagingError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| ImagingError::io(p, e));
    let (vols, seg) = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .modalities
            .iter()
            .map(|(m, p)| {
                s.spawn(move || {
                    let bytes = read(p)?;
                    read_volume(&bytes, limits).map(|v| (*m, v)).map_err(|e| e.in_file(p))
                })
            })
            .collect();
        let seg = files.seg.as_ref().map(|p| {
            let bytes = read(p)?;
            read_seg_brats(&bytes, limits).map_err(|e| e.in_file(p))
        });
        let vols: Vec<_> = handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            })
            .collect();
        (vols, seg)
    });
    Ok(LoadedCase {
        name: files.name.clone(),
        volumes: vols.into_iter().collect::<Result<_, _>>()?,
        seg: seg.transpose()?,
    })
}

/// Molecular / grade labels of a case; `None` means unknown (never "negative").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseLabels {
    /// Glioblastoma / high grade (true) vs lower grade (false).
    pub grade_gbm: Option<bool>,
    pub idh_mutant: Option<bool>,
    pub codel_1p19q: Option<bool>,
    pub mgmt_methylated: Option<bool>,
}

/// Reads CSV records (quoted fields, "" escapes, CRLF; rows of only blank cells dropped) as
/// (line number, fields).
/// One CSV record: its line number and fields.
type Record = (usize, Vec<String>);

fn parse_csv(text: &str, delim: u8) -> Result<Vec<Record>, (usize, String)> {
    let mut reader =
        csv::ReaderBuilder::new().delimiter(delim).has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| (e.position().map_or(0, |p| p.line() as usize), e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let fields: Vec<String> = record.iter().map(str::to_string).collect();
        if fields.iter().any(|f| !f.trim().is_empty()) {
            rows.push((line, fields));
        }
    }
    Ok(rows)
}

fn norm(s: &str) -> String {
    s.trim().to_ascii_lowercase().chars().filter(char::is_ascii_alphanumeric).collect()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Col {
    Case,
    GradeClass,
    WhoGrade,
    Histology,
    Idh,
    Codel,
    Mgmt,
}

fn column_role(name: &str) -> Option<Col> {
    let n = norm(name);
    let n = n.as_str();
    if matches!(n, "case" | "id" | "name" | "subject" | "patient")
        || n.starts_with("case")
        || n.starts_with("subject")
        || n.starts_with("patient")
        || (n.starts_with("brats") && n.ends_with("id"))
    {
        return Some(Col::Case);
    }
    if n.starts_with("who") || n == "gradewho" {
        return Some(Col::WhoGrade);
    }
    if matches!(n, "grade" | "gradeclass" | "class" | "tumorgrade" | "hgglgg" | "lgghgg" | "glioma") {
        return Some(Col::GradeClass);
    }
    if matches!(n, "histology" | "diagnosis" | "histologicaltype") {
        return Some(Col::Histology);
    }
    if n.starts_with("idh") {
        return Some(Col::Idh);
    }
    if n.contains("1p19q") || n == "codel" || n == "codeletion" {
        return Some(Col::Codel);
    }
    if n.starts_with("mgmt") {
        return Some(Col::Mgmt);
    }
    None
}

fn is_unknown(v: &str) -> bool {
    matches!(v, "" | "na" | "nan" | "none" | "null" | "unknown" | "unk" | "notavailable" | "nos" | "nd")
}

/// Parses a label value; `Err` with the accepted spellings when unrecognized.
fn parse_value(col: Col, raw: &str) -> Result<Option<bool>, &'static str> {
    let v = norm(raw);
    if is_unknown(&v) {
        return Ok(None);
    }
    let (yes, no, expected): (&[&str], &[&str], &str) = match col {
        Col::GradeClass | Col::WhoGrade => (
            &["gbm", "hgg", "glioblastoma", "4", "g4", "iv", "grade4", "gradeiv", "who4", "highgrade", "high"],
            &[
                "lgg", "1", "2", "3", "g1", "g2", "g3", "i", "ii", "iii", "grade1", "grade2", "grade3", "gradeii",
                "gradeiii", "who2", "who3", "lowgrade", "low",
            ],
            "LGG/HGG/GBM or a WHO grade 2/3/4 (G2, III, ...)",
        ),
        Col::Idh => (
            &["mutant", "mut", "mutated", "mutation", "idhmutant", "positive", "pos", "yes", "y", "true", "1"],
            &["wildtype", "wt", "wild", "idhwildtype", "negative", "neg", "no", "n", "false", "0"],
            "mutant/wildtype (or yes/no, 1/0)",
        ),
        Col::Codel => (
            &["codel", "codeleted", "codeletion", "deleted", "1p19qcodel", "positive", "pos", "yes", "y", "true", "1"],
            &[
                "intact",
                "noncodel",
                "noncodeleted",
                "notcodeleted",
                "retained",
                "negative",
                "neg",
                "no",
                "n",
                "false",
                "0",
            ],
            "codel/intact (or yes/no, 1/0)",
        ),
        Col::Mgmt => (
            &["methylated", "meth", "positive", "pos", "yes", "y", "true", "1"],
            &["unmethylated", "unmeth", "nonmethylated", "negative", "neg", "no", "n", "false", "0"],
            "methylated/unmethylated (or yes/no, 1/0)",
        ),
        Col::Histology => {
            return Ok(v.contains("glioblastoma").then_some(true));
        }
        Col::Case => return Ok(None),
    };
    if yes.contains(&v.as_str()) {
        Ok(Some(true))
    } else if no.contains(&v.as_str()) {
        Ok(Some(false))
    } else {
        Err(expected)
    }
}

/// Reads a per-case labels CSV. Columns are recognized by name (case/id/subject...,
/// grade/grade_class, who_grade, histology, idh..., codel_1p19q/1p19q, mgmt...); others are
/// ignored. Blank or NA cells mean unknown. A WHO grade wins over a grade class; histology
/// "glioblastoma" fills a grade still unknown.
pub fn read_labels_csv(path: &Path) -> Result<BTreeMap<String, CaseLabels>, ImagingError> {
    let text = std::fs::read_to_string(path).map_err(|e| ImagingError::io(path, e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let csv_err = |line: usize, detail: String| ImagingError::Csv { path: path.display().to_string(), line, detail };
    let first = text.lines().next().unwrap_or("");
    let delim = [b',', b'\t', b';'].into_iter().max_by_key(|d| first.matches(char::from(*d)).count()).unwrap_or(b',');
    let rows = parse_csv(text, delim).map_err(|(line, detail)| csv_err(line, detail))?;
    let Some(((hline, header), body)) = rows.split_first() else {
        return Err(csv_err(1, "empty file: expected a header row".into()));
    };
    let roles: Vec<Option<Col>> = header.iter().map(|h| column_role(h)).collect();
    let Some(case_col) = roles.iter().position(|r| *r == Some(Col::Case)) else {
        return Err(csv_err(
            *hline,
            format!("no case column among {header:?}: expected one named case/case_id/id/subject"),
        ));
    };
    let mut out = BTreeMap::new();
    for (line, fields) in body {
        if fields.len() > header.len() {
            return Err(csv_err(
                *line,
                format!("{} fields: expected at most {} (the header's columns)", fields.len(), header.len()),
            ));
        }
        let case = fields.get(case_col).map(|s| s.trim()).unwrap_or("");
        if case.is_empty() {
            return Err(csv_err(*line, format!("column {}: expected a case id", header[case_col])));
        }
        let mut who = None;
        let mut class = None;
        let mut histo = None;
        let mut labels = CaseLabels::default();
        for (i, role) in roles.iter().enumerate() {
            let Some(role) = *role else { continue };
            if role == Col::Case {
                continue;
            }
            let raw = fields.get(i).map(String::as_str).unwrap_or("");
            let v = parse_value(role, raw).map_err(|expected| {
                csv_err(*line, format!("column {} value {raw:?}: expected {expected}", header[i]))
            })?;
            let slot = match role {
                Col::WhoGrade => &mut who,
                Col::GradeClass => &mut class,
                Col::Histology => &mut histo,
                Col::Idh => &mut labels.idh_mutant,
                Col::Codel => &mut labels.codel_1p19q,
                Col::Mgmt => &mut labels.mgmt_methylated,
                Col::Case => continue,
            };
            if slot.is_none() {
                *slot = v;
            }
        }
        labels.grade_gbm = who.or(class).or(histo);
        if out.insert(case.to_string(), labels).is_some() {
            return Err(csv_err(*line, format!("case {case} appears twice: expected one row per case")));
        }
    }
    Ok(out)
}

/// Writes `case_id,grade,idh,codel_1p19q,mgmt` with GBM/LGG, mutant/wildtype, codel/intact,
/// methylated/unmethylated; unknown values are left blank.
pub fn write_labels_csv(path: &Path, labels: &BTreeMap<String, CaseLabels>) -> Result<(), ImagingError> {
    let pick = |v: Option<bool>, yes: &'static str, no: &'static str| match v {
        Some(true) => yes,
        Some(false) => no,
        None => "",
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    let csv_err =
        |e: csv::Error| ImagingError::Csv { path: path.display().to_string(), line: 0, detail: e.to_string() };
    w.write_record(["case_id", "grade", "idh", "codel_1p19q", "mgmt"]).map_err(csv_err)?;
    for (case, l) in labels {
        w.write_record([
            case.as_str(),
            pick(l.grade_gbm, "GBM", "LGG"),
            pick(l.idh_mutant, "mutant", "wildtype"),
            pick(l.codel_1p19q, "codel", "intact"),
            pick(l.mgmt_methylated, "methylated", "unmethylated"),
        ])
        .map_err(csv_err)?;
    }
    let bytes = w.into_inner().map_err(|e| csv_err(e.into_error().into()))?;
    std::fs::write(path, bytes).map_err(|e| ImagingError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti::{write_labels, write_volume};
    use crate::types::Grid;

    fn touch(dir: &Path, names: &[&str]) {
        for n in names {
            std::fs::write(dir.join(n), b"x").unwrap();
        }
    }

    #[test]
    fn discover_2018_naming() {
        let t = tempfile::tempdir().unwrap();
        touch(
            t.path(),
            &[
                "Brats18_X_1_flair.nii.gz",
                "Brats18_X_1_t1.nii.gz",
                "Brats18_X_1_t1ce.nii.gz",
                "Brats18_X_1_t2.nii",
                "Brats18_X_1_seg.nii.gz",
                "README.txt",
                "Brats18_X_1_t1.json",
            ],
        );
        std::fs::create_dir(t.path().join("sub_t1.nii.gz")).unwrap();
        let c = discover_case(t.path()).unwrap();
        assert_eq!(c.name, "Brats18_X_1");
        let mods: Vec<Modality> = c.modalities.iter().map(|(m, _)| *m).collect();
        assert_eq!(mods, Modality::ALL);
        assert!(c.modalities[2].1.ends_with("Brats18_X_1_t2.nii"));
        assert!(c.modalities[1].1.ends_with("Brats18_X_1_t1ce.nii.gz"));
        assert!(c.seg.unwrap().ends_with("Brats18_X_1_seg.nii.gz"));
    }

    #[test]
    fn discover_2023_naming_and_subsets() {
        let t = tempfile::tempdir().unwrap();
        touch(
            t.path(),
            &["BraTS-GLI-00005-000-t1n.nii.gz", "BraTS-GLI-00005-000-t2f.nii.gz", "BraTS-GLI-00005-000-T1C.nii.gz"],
        );
        let c = discover_case(t.path()).unwrap();
        assert_eq!(c.name, "BraTS-GLI-00005-000");
        let mods: Vec<Modality> = c.modalities.iter().map(|(m, _)| *m).collect();
        assert_eq!(mods, [Modality::T1, Modality::T1ce, Modality::Flair]);
        assert!(c.seg.is_none());
    }

    #[test]
    fn discover_errors() {
        let t = tempfile::tempdir().unwrap();
        touch(t.path(), &["notes.txt"]);
        let err = discover_case(t.path()).unwrap_err().to_string();
        assert!(err.contains(&t.path().display().to_string()), "{err}");
        assert!(err.contains("no BraTS image"), "{err}");
        touch(t.path(), &["c_t1.nii", "c_t1.nii.gz"]);
        let err = discover_case(t.path()).unwrap_err().to_string();
        assert!(err.contains("c_t1.nii") && err.contains("c_t1.nii.gz"), "{err}");
        let t2 = tempfile::tempdir().unwrap();
        touch(t2.path(), &["a_flair.nii.gz", "a-t2f.nii.gz"]);
        let err = discover_case(t2.path()).unwrap_err().to_string();
        assert!(err.contains("a_flair.nii.gz") && err.contains("a-t2f.nii.gz"), "{err}");
        assert!(discover_case(&t.path().join("missing")).is_err());
    }

    #[test]
    fn seg_labels_are_checked_and_mapped() {
        let g = Grid::axis_aligned([4, 1, 1], [1.0; 3], [0.0; 3]);
        let l = LabelVolume::new(g.clone(), vec![0, 1, 2, 3]).unwrap();
        let s = read_seg_brats(&write_labels(&l, true), &Limits::default()).unwrap();
        assert_eq!(s.data, vec![0, 1, 2, 4]);
        let bad = LabelVolume::new(g.clone(), vec![0, 1, 5, 2]).unwrap();
        let err = read_seg_brats(&write_labels(&bad, false), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("label value 5"), "{err}");
        let fl = Volume::new(g, vec![0.0, 1.0, 2.0, 2.5]).unwrap();
        assert!(read_seg_brats(&write_volume(&fl, false), &Limits::default()).is_err());
    }

    #[test]
    fn load_case_reads_everything_and_names_bad_files() {
        let t = tempfile::tempdir().unwrap();
        let g = Grid::axis_aligned([3, 2, 2], [1.0; 3], [0.0; 3]);
        for (k, m) in Modality::ALL.iter().enumerate() {
            let v = Volume::new(g.clone(), vec![k as f32; 12]).unwrap();
            std::fs::write(t.path().join(format!("c_{m}.nii.gz")), write_volume(&v, true)).unwrap();
        }
        let seg = LabelVolume::new(g.clone(), vec![0, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 4]).unwrap();
        std::fs::write(t.path().join("c_seg.nii.gz"), write_labels(&seg, true)).unwrap();
        let files = discover_case(t.path()).unwrap();
        let c = load_case(&files, &Limits::default()).unwrap();
        assert_eq!(c.name, "c");
        for (k, (m, v)) in c.volumes.iter().enumerate() {
            assert_eq!(*m, Modality::ALL[k]);
            assert!(v.data.iter().all(|&x| x == k as f32));
        }
        assert_eq!(c.seg.unwrap().data[3], 4);
        std::fs::write(t.path().join("c_t2.nii.gz"), b"garbage garbage").unwrap();
        let err = load_case(&files, &Limits::default()).unwrap_err().to_string();
        assert!(err.contains("c_t2.nii.gz") && err.contains("not a NIfTI-1"), "{err}");
    }

    #[test]
    fn labels_csv_with_blanks_and_synonyms() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("labels.csv");
        std::fs::write(
            &p,
            "\u{feff}Subject ID,Grade,IDH status,1p/19q,MGMT_value,Age\r\n\
             A,GBM,wildtype,,0,60\r\n\
             B,LGG,Mutant,codel,methylated,41\r\n\
             \"C, the third\",2,NA,intact,,\r\n\
             D,,,,,\r\n\
             E,IV,1,0,unmethylated,70\r\n\
             \r\n",
        )
        .unwrap();
        let m = read_labels_csv(&p).unwrap();
        assert_eq!(m.len(), 5);
        let l = |g, i, c, mg| CaseLabels { grade_gbm: g, idh_mutant: i, codel_1p19q: c, mgmt_methylated: mg };
        assert_eq!(m["A"], l(Some(true), Some(false), None, Some(false)));
        assert_eq!(m["B"], l(Some(false), Some(true), Some(true), Some(true)));
        assert_eq!(m["C, the third"], l(Some(false), None, Some(false), None));
        assert_eq!(m["D"], CaseLabels::default());
        assert_eq!(m["E"], l(Some(true), Some(true), Some(false), Some(false)));
    }

    #[test]
    fn labels_csv_in_the_shared_dataset_format() {
        // Same columns as the shared BraTS 2018 labels file (case IDs invented here).
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("labels.csv");
        std::fs::write(
            &p,
            "case_id,grade_class,who_grade,histology,idh,codel_1p19q,mgmt,tcga_id\n\
             Case_A,HGG,,,,,,\n\
             Case_B,HGG,G4,glioblastoma,wildtype,intact,unmethylated,TCGA-00-0001\n\
             Case_C,HGG,G4,glioblastoma,mutant,,methylated,TCGA-00-0002\n\
             Case_D,LGG,G3,oligodendroglioma,mutant,codel,methylated,TCGA-00-0003\n\
             Case_E,LGG,G2,oligoastrocytoma,mutant,intact,,TCGA-00-0004\n",
        )
        .unwrap();
        let m = read_labels_csv(&p).unwrap();
        assert_eq!(m["Case_A"].grade_gbm, Some(true));
        assert_eq!(m["Case_A"].idh_mutant, None);
        assert_eq!(m["Case_B"].codel_1p19q, Some(false));
        assert_eq!(m["Case_B"].mgmt_methylated, Some(false));
        assert_eq!(m["Case_C"].idh_mutant, Some(true));
        assert_eq!(m["Case_C"].codel_1p19q, None);
        assert_eq!(m["Case_D"].grade_gbm, Some(false));
        assert_eq!(m["Case_D"].codel_1p19q, Some(true));
        assert_eq!(m["Case_E"].mgmt_methylated, None);
    }

    #[test]
    fn labels_csv_errors() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("l.csv");
        std::fs::write(&p, "case,idh\nA,maybe\n").unwrap();
        let err = read_labels_csv(&p).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("\"maybe\""), "{err}");
        std::fs::write(&p, "grade,idh\nGBM,mutant\n").unwrap();
        assert!(read_labels_csv(&p).unwrap_err().to_string().contains("no case column"));
        std::fs::write(&p, "case,idh\nA,mutant\nA,wildtype\n").unwrap();
        assert!(read_labels_csv(&p).unwrap_err().to_string().contains("twice"));
        std::fs::write(&p, "case,idh\n,mutant\n").unwrap();
        assert!(read_labels_csv(&p).is_err());
        std::fs::write(&p, "").unwrap();
        assert!(read_labels_csv(&p).is_err());
        assert!(read_labels_csv(&t.path().join("none.csv")).is_err());
    }

    #[test]
    fn labels_csv_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("out.csv");
        let mut m = BTreeMap::new();
        m.insert(
            "x,1".to_string(),
            CaseLabels {
                grade_gbm: Some(true),
                idh_mutant: Some(false),
                codel_1p19q: None,
                mgmt_methylated: Some(true),
            },
        );
        m.insert("y".to_string(), CaseLabels::default());
        write_labels_csv(&p, &m).unwrap();
        assert_eq!(read_labels_csv(&p).unwrap(), m);
    }

    #[test]
    fn real_labels_file_parses_when_present() {
        let p = Path::new("/work/shared/data/brats/labels.csv");
        if !p.exists() {
            return;
        }
        let m = read_labels_csv(p).unwrap();
        assert!(!m.is_empty());
        assert!(m.values().all(|l| l.grade_gbm.is_some()));
        assert!(m.values().filter(|l| l.idh_mutant == Some(true)).count() >= 1);
    }
}
