"""Reads a DICOM SEG written by GMMAS with independent tools and compares it with the label map
it was written from; run by dicom/tests/seg.rs. Exit status 0 when everything agrees.

  seg_read.py --seg seg.dcm --source SERIES_DIR --labels labels.nii.gz [--dcmqi WORKDIR]

- highdicom: the masks of each segment, fetched by source instance (get_pixels_by_source_instance),
  and the frames placed by their own ImagePositionPatient onto the source slices, must both
  equal the label map (source slices in order along the slice normal, as GMMAS stacks them).
- dcmqi (with --dcmqi): segimage2itkimage's NIfTI of each segment, mapped through its own
  geometry onto the label map's grid, must hold exactly the label map's voxels of that label.
Prints one JSON line of what was compared.
"""

import argparse
import glob
import json
import os
import subprocess
import sys

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom

# SegmentedPropertyTypeCode value -> BraTS label.
LABEL_OF_CODE = {"6574001": 1, "79654002": 2, "108369006": 4}


def fail(msg):
    print(f"seg_read.py: {msg}", file=sys.stderr)
    sys.exit(1)


def source_slices(folder):
    """Source datasets sorted along the slice normal (LPS), and the normal."""
    paths = [p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True) if os.path.isfile(p)]
    ds = [pydicom.dcmread(p) for p in paths]
    iop = np.array(ds[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    ds.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, dtype=float), normal)))
    return ds, iop


def check_header(seg, src, iop):
    s0 = src[0]
    if seg.SOPClassUID != "1.2.840.10008.5.1.4.1.1.66.4":
        fail(f"SOP class {seg.SOPClassUID}")
    if seg.StudyInstanceUID != s0.StudyInstanceUID or seg.FrameOfReferenceUID != s0.FrameOfReferenceUID:
        fail("study or frame of reference differs from the source")
    if seg.SeriesInstanceUID == s0.SeriesInstanceUID:
        fail("the SEG reuses the source's SeriesInstanceUID")
    if seg.PatientID != s0.PatientID or seg.PatientName != s0.PatientName:
        fail("patient module not copied from the source")
    shared = seg.SharedFunctionalGroupsSequence[0]
    seg_iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    if np.abs(seg_iop - iop).max() > 1e-4:
        fail(f"ImageOrientationPatient {seg_iop} vs source {iop}")
    sp = np.array(shared.PixelMeasuresSequence[0].PixelSpacing, dtype=float)
    if np.abs(sp - np.array(s0.PixelSpacing, dtype=float)).max() > 1e-4:
        fail(f"PixelSpacing {sp} vs source {s0.PixelSpacing}")
    refs = {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    if refs != {d.SOPInstanceUID for d in src}:
        fail("ReferencedSeriesSequence does not list exactly the source's instances")


def segment_labels(seg):
    out = {}
    for s in seg.SegmentSequence:
        code = s.SegmentedPropertyTypeCodeSequence[0].CodeValue
        if code not in LABEL_OF_CODE:
            fail(f"segment {s.SegmentNumber}: unexpected property type {code}")
        out[int(s.SegmentNumber)] = LABEL_OF_CODE[code]
    return out


def by_position(seg, src, labels_of, rows, cols):
    """Label volume [slice, row, col] from each frame's own position."""
    positions = np.array([np.array(d.ImagePositionPatient, dtype=float) for d in src])
    out = np.zeros((len(src), rows, cols), dtype=np.uint8)
    frames = seg.pixel_array.reshape(-1, rows, cols)
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ipp = np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        k = int(np.argmin(np.abs(positions - ipp).max(axis=1)))
        if np.abs(positions[k] - ipp).max() > 1e-3:
            fail(f"frame {f + 1} at {ipp} lies on no source slice")
        label = labels_of[int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
        if np.any(out[k][frames[f] > 0]):
            fail(f"frame {f + 1}: segments overlap")
        out[k][frames[f] > 0] = label
    return out


def by_instance(seg, src, labels_of):
    """Label volume [slice, row, col] through highdicom's source-instance lookup."""
    uids = [d.SOPInstanceUID for d in src]
    numbers = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    lut = np.zeros(max(labels_of) + 1, dtype=np.uint8)
    for n, label in labels_of.items():
        lut[n] = label
    return lut[numbers]


def dcmqi(seg_path, labels_img, workdir):
    """For each segment file of segimage2itkimage: voxels compared through world coordinates."""
    os.makedirs(workdir, exist_ok=True)
    exe = os.path.join(os.path.dirname(sys.executable), "segimage2itkimage")
    cmd = [exe, "--inputDICOM", seg_path, "--outputDirectory", workdir, "--outputType", "nifti", "--prefix", "s"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        fail(f"segimage2itkimage failed: {run.stdout}{run.stderr}")
    meta = json.load(open(os.path.join(workdir, "s-meta.json")))
    ours = np.asarray(labels_img.dataobj)
    inv = np.linalg.inv(labels_img.affine)
    compared = 0
    for attrs in (a for group in meta["segmentAttributes"] for a in group):
        label = LABEL_OF_CODE[attrs["SegmentedPropertyTypeCodeSequence"]["CodeValue"]]
        img = nib.load(os.path.join(workdir, f"s-{attrs['labelID']}.nii.gz"))
        data = np.asarray(img.dataobj)
        ijk = np.argwhere(data > 0)
        world = img.affine @ np.c_[ijk, np.ones(len(ijk))].T
        mapped = (inv @ world)[:3].T
        if np.abs(mapped - np.round(mapped)).max(initial=0) > 1e-2:
            fail(f"dcmqi segment {label}: voxels do not land on the label map's grid")
        idx = np.round(mapped).astype(int)
        if not np.all(ours[idx[:, 0], idx[:, 1], idx[:, 2]] == label):
            fail(f"dcmqi segment {label}: a voxel is not label {label} in the label map")
        if len(idx) != int(np.count_nonzero(ours == label)):
            fail(f"dcmqi segment {label}: {len(idx)} voxels vs {np.count_nonzero(ours == label)}")
        compared += len(idx)
    return compared


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seg", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--dcmqi")
    a = ap.parse_args()
    seg = hd.seg.segread(a.seg)
    src, iop = source_slices(a.source)
    check_header(seg, src, iop)
    labels_of = segment_labels(seg)
    rows, cols = int(seg.Rows), int(seg.Columns)
    pos = by_position(seg, src, labels_of, rows, cols)
    inst = by_instance(seg, src, labels_of)
    if not np.array_equal(pos, inst):
        fail("highdicom's masks by source instance differ from the frames placed by position")
    labels_img = nib.load(a.labels)
    ours = np.asarray(labels_img.dataobj).astype(np.uint8)  # [col, row, slice]
    theirs = np.transpose(pos, (2, 1, 0))
    if ours.shape != theirs.shape:
        fail(f"shape {theirs.shape} vs label map {ours.shape}")
    mismatches = int(np.count_nonzero(ours != theirs))
    report = {
        "frames": int(seg.NumberOfFrames),
        "segments": sorted(labels_of.values()),
        "voxels": int(ours.size),
        "tumour_voxels": int(np.count_nonzero(ours)),
        "highdicom_mismatches": mismatches,
    }
    if a.dcmqi:
        report["dcmqi_voxels"] = dcmqi(a.seg, labels_img, a.dcmqi)
    print(json.dumps(report))
    if mismatches:
        fail(f"{mismatches} voxels differ from the label map")


if __name__ == "__main__":
    main()
