-- Two models can be current at once: `complete` serves cases with all four sequences (and every
-- case when no `incomplete` model is current); `incomplete` serves cases missing a sequence (the
-- model trained with the missing-modality adaptation module).
ALTER TABLE model_registry ADD COLUMN role TEXT NOT NULL DEFAULT 'complete'
    CHECK (role IN ('complete', 'incomplete'));
DROP INDEX model_registry_one_current;
CREATE UNIQUE INDEX model_registry_one_current ON model_registry (role) WHERE status = 'current';
