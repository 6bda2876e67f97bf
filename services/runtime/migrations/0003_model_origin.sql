-- Where a registered model came from: `bundled` (shipped with GMMAS, superseded by a newer
-- bundled release) or `trained` (promoted by a hospital's own training; never replaced by a bundle).
ALTER TABLE model_registry ADD COLUMN origin TEXT NOT NULL DEFAULT 'bundled'
    CHECK (origin IN ('bundled', 'trained'));
