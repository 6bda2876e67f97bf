-- Skull stripping recorded with each analysis: how it was done and the brain mask used.
ALTER TABLE analyses
    ADD COLUMN skull_strip        TEXT NOT NULL DEFAULT '',
    ADD COLUMN brain_mask_key     TEXT,
    ADD COLUMN brain_mask_sha256  TEXT;
