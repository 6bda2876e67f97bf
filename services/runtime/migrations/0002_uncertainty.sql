-- MC-Dropout uncertainty stored with each analysis (paper eq. 6).
ALTER TABLE analyses
    ADD COLUMN mc_passes          INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN probabilities_std  JSONB,
    ADD COLUMN uncertainty_key    TEXT,
    ADD COLUMN uncertainty_sha256 TEXT,
    ADD COLUMN mean_uncertainty_wt REAL;
