-- Each DICOM series' own grid, kept with the case so that results can be returned on it:
-- [{"sequence": "t2", "grid": {...}, "in_reference": {...}}]; geometry only, no header values.
ALTER TABLE cases ADD COLUMN native_grids JSONB;
