use super::*;
use crate::partial::{SEG_IGNORE, SEG_TUMOUR, SegSupervision};

fn phantoms(n: usize, dims: [usize; 3]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    gmmas_phantom::write_dataset(n, 5, dims, dir.path()).unwrap();
    dir
}

fn cfg(dir: &Path) -> DataConfig {
    DataConfig { dirs: vec![dir.to_path_buf()], labels: vec![dir.join("labels.csv")], ..DataConfig::default() }
}

/// A case with only FLAIR + T1 and a whole-tumour mask (like `../shared/data/weak/`)
/// loads as whole-tumour supervision: tumour voxels SEG_TUMOUR, no sub-region classes,
/// not scored as a full segmentation; a case without any mask is all ignored.
#[test]
fn whole_tumour_mask_and_missing_segmentation_are_partial_targets() {
    let d = phantoms(2, [40, 40, 32]);
    let case_dir = d.path().join("Phantom_0000");
    let seg_path = case_dir.join("Phantom_0000_seg.nii.gz");
    let seg = gmmas_imaging::read_labels(&std::fs::read(&seg_path).unwrap(), &Limits::default()).unwrap();
    let tumour = seg.data.iter().filter(|&&v| v != 0).count();
    let wt = gmmas_imaging::LabelVolume {
        grid: seg.grid.clone(),
        data: seg.data.iter().map(|&v| u8::from(v != 0)).collect(),
    };
    std::fs::write(case_dir.join("Phantom_0000_wt.nii.gz"), gmmas_imaging::write_labels(&wt, true)).unwrap();
    for f in ["seg", "t1ce", "t2"] {
        std::fs::remove_file(case_dir.join(format!("Phantom_0000_{f}.nii.gz"))).unwrap();
    }
    std::fs::remove_file(d.path().join("Phantom_0001/Phantom_0001_seg.nii.gz")).unwrap();
    let mut c = cfg(d.path());
    c.required_modalities = Vec::new();
    // Without require_seg the case without any mask loads too.
    c.require_seg = false;
    let ds = Dataset::load(&c).unwrap();
    let weak = &ds.cases[0];
    assert_eq!(weak.supervision, SegSupervision::WholeTumour);
    assert!(!weak.has_seg);
    assert_eq!(weak.present, [true, false, false, true]);
    assert!(weak.seg.iter().all(|&v| v == 0 || v == SEG_TUMOUR));
    assert_eq!(weak.tumor_voxels, weak.seg.iter().filter(|&&v| v == SEG_TUMOUR).count());
    assert!(weak.tumor_voxels > 0 && weak.tumor_voxels <= tumour);
    let none = &ds.cases[1];
    assert_eq!(none.supervision, SegSupervision::None);
    assert!(none.seg.iter().all(|&v| v == SEG_IGNORE) && none.tumor_bbox.is_none());
    // With require_seg the whole-tumour case still counts as segmented; the other does not.
    c.require_seg = true;
    let err = Dataset::load(&c).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].case, "Phantom_0001");
}

#[test]
fn loads_phantoms_with_labels_and_hashes() {
    let d = phantoms(3, [40, 40, 32]);
    let ds = Dataset::load(&cfg(d.path())).unwrap();
    assert_eq!(ds.cases.len(), 3);
    assert_eq!(ds.cases[0].name, "Phantom_0000");
    for c in &ds.cases {
        assert_eq!(c.image.len(), 4 * c.voxels());
        assert_eq!(c.seg.len(), c.voxels());
        assert!(c.seg.iter().all(|&v| v <= 3));
        assert!(c.tumor_voxels > 0 && c.tumor_bbox.is_some());
        assert_eq!(c.file_sha256.len(), 5);
        assert_eq!(c.spacing, [1.0; 3]);
    }
    assert!(ds.cases.iter().any(|c| c.tasks.iter().any(Option::is_some)));
    let again = Dataset::load(&cfg(d.path())).unwrap();
    assert_eq!(ds.sha256(), again.sha256());
    assert_eq!(ds.indices(Subset::Train), vec![0, 1, 2]);
    // Very large cases are prepared at a coarser spacing.
    let mut c = cfg(d.path());
    c.max_case_voxels = Some(4000);
    c.max_cases = Some(1);
    let small = Dataset::load(&c).unwrap();
    let case = &small.cases[0];
    assert!(case.spacing[0] > 1.0 && case.voxels() < ds.cases[0].voxels(), "{:?}", case.spacing);
    assert_eq!(case.seg.len(), case.voxels());
    assert!(small.warnings.iter().any(|w| w.contains("max_case_voxels")));
}

/// Train-only folders join every fold's training cases and leave the k-fold assignment
/// of the other cases as it was; a split file need not name them.
#[test]
fn train_only_cases_are_always_training_cases() {
    let d = phantoms(5, [24, 24, 16]);
    let extra = tempfile::tempdir().unwrap();
    gmmas_phantom::write_dataset(2, 9, [24, 24, 16], extra.path()).unwrap();
    for i in 0..2 {
        let old = extra.path().join(format!("Phantom_000{i}"));
        for f in std::fs::read_dir(&old).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().replace("Phantom", "Extra");
            std::fs::rename(&f, old.join(name)).unwrap();
        }
        std::fs::rename(&old, extra.path().join(format!("Extra_000{i}"))).unwrap();
    }
    for fold in 0..5 {
        let mut plain = cfg(d.path());
        plain.split = SplitConfig::KFold { k: 5, fold, seed: 2 };
        let base = Dataset::load(&plain).unwrap();
        let mut with = plain.clone();
        with.train_only_dirs = vec![extra.path().to_path_buf()];
        let ds = Dataset::load(&with).unwrap();
        assert_eq!(ds.cases.len(), 7);
        let subset_of = |ds: &Dataset, name: &str| ds.subsets[ds.cases.iter().position(|c| c.name == name).unwrap()];
        for c in &base.cases {
            assert_eq!(subset_of(&ds, &c.name), subset_of(&base, &c.name), "fold {fold} {}", c.name);
        }
        assert_eq!(subset_of(&ds, "Extra_0000"), Subset::Train);
        assert_eq!(subset_of(&ds, "Extra_0001"), Subset::Train);
    }
    let split = d.path().join("split.csv");
    std::fs::write(&split, "case,subset\nPhantom_0000,val\nPhantom_0001,train\n").unwrap();
    let mut file = cfg(d.path());
    file.split = SplitConfig::File { path: split };
    file.train_only_dirs = vec![extra.path().to_path_buf()];
    let ds = Dataset::load(&file).unwrap();
    let names: Vec<&str> = ds.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["Extra_0000", "Extra_0001", "Phantom_0000", "Phantom_0001"]);
    assert_eq!(ds.subsets, [Subset::Train, Subset::Train, Subset::Val, Subset::Train]);
}

#[test]
fn reports_every_bad_case_by_name() {
    let d = phantoms(5, [32, 32, 24]);
    let root = d.path();
    let case = |i: usize, suffix: &str| root.join(format!("Phantom_000{i}/Phantom_000{i}_{suffix}.nii.gz"));
    // 0: segmentation deleted; 1: t2 corrupt; 2: flair on another grid;
    // 3: label value 7 in the segmentation; 4: good.
    std::fs::remove_file(case(0, "seg")).unwrap();
    std::fs::write(case(1, "t2"), b"not a nifti file at all").unwrap();
    let other = gmmas_phantom::generate(&gmmas_phantom::PhantomConfig { dims: [30, 32, 24], seed: 1 });
    std::fs::write(case(2, "flair"), gmmas_imaging::write_volume(&other.volumes[3].1, true)).unwrap();
    let mut seg =
        gmmas_imaging::brats::read_seg_brats(&std::fs::read(case(3, "seg")).unwrap(), &Limits::default()).unwrap();
    seg.data[5] = 7;
    std::fs::write(case(3, "seg"), gmmas_imaging::write_labels(&seg, true)).unwrap();

    let err = Dataset::load(&cfg(root)).unwrap_err();
    let text = err.to_string();
    assert_eq!(err.problems.len(), 4, "{text}");
    let names: Vec<&str> = err.problems.iter().map(|p| p.case.as_str()).collect();
    assert_eq!(names, ["Phantom_0000", "Phantom_0001", "Phantom_0002", "Phantom_0003"]);
    assert!(text.contains("no segmentation"), "{text}");
    assert!(text.contains("Phantom_0001_t2.nii.gz"), "{text}");
    assert!(text.contains("Phantom_0002_flair.nii.gz") && text.contains("grid"), "{text}");
    assert!(text.contains("Phantom_0003_seg.nii.gz") && text.contains("label value 7"), "{text}");

    // Skipping keeps the good case and explains the rest.
    let mut c = cfg(root);
    c.skip_bad_cases = true;
    let ds = Dataset::load(&c).unwrap();
    assert_eq!(ds.cases.len(), 1);
    assert_eq!(ds.cases[0].name, "Phantom_0004");
    assert_eq!(ds.skipped.len(), 4);
    assert!(ds.warnings.iter().any(|w| w.contains("Phantom_0002")));

    // A missing modality breaks the default "all four" requirement only.
    std::fs::remove_file(case(4, "t1")).unwrap();
    let err = Dataset::load(&cfg(root)).unwrap_err();
    assert!(err.to_string().contains("missing t1 image"), "{err}");
    c.skip_bad_cases = false;
    c.required_modalities.clear();
    c.dirs = vec![root.join("Phantom_0004")];
    let ds = Dataset::load(&c).unwrap();
    assert_eq!(ds.cases[0].present, [false, true, true, true]);
}

#[test]
fn split_file_and_kfold() {
    let d = phantoms(4, [24, 24, 20]);
    let split = d.path().join("split.csv");
    std::fs::write(&split, "case,subset\nPhantom_0000,train\nPhantom_0001 val # comment\nPhantom_0002;test\n").unwrap();
    let mut c = cfg(d.path());
    c.split = SplitConfig::File { path: split.clone() };
    let ds = Dataset::load(&c).unwrap();
    assert_eq!(ds.cases.len(), 3);
    assert_eq!(ds.subsets, vec![Subset::Train, Subset::Val, Subset::Test]);
    assert!(ds.warnings.iter().any(|w| w.contains("not named")));
    std::fs::write(&split, "Phantom_0000,train\nPhantom_0001,banana\n").unwrap();
    let e = Dataset::load(&c).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("banana"), "{e}");

    let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    let a = kfold_assign(&names, 5, 1, 3);
    assert_eq!(a, kfold_assign(&names, 5, 1, 3));
    assert_eq!(a.iter().filter(|s| **s == Subset::Val).count(), 2);
    // Folds partition the cases.
    let mut count = [0; 10];
    for f in 0..5 {
        for (i, s) in kfold_assign(&names, 5, f, 3).iter().enumerate() {
            count[i] += usize::from(*s == Subset::Val);
        }
    }
    assert!(count.iter().all(|&c| c == 1));
}

#[test]
fn inverse_frequency_weights() {
    assert_eq!(class_weights([3, 1]), [4.0 / 6.0, 2.0]);
    assert_eq!(class_weights([2, 2]), [1.0, 1.0]);
    assert_eq!(class_weights([0, 5]), [1.0, 1.0]);
}
