-- The learning loop: clinician labels, pseudo-labels, training runs, and a registry whose
-- models carry their parent, data snapshot, config and gate metrics.

ALTER TABLE model_registry DROP CONSTRAINT model_registry_status_check;
ALTER TABLE model_registry ADD CONSTRAINT model_registry_status_check
    CHECK (status IN ('current', 'candidate', 'retired', 'rejected', 'rolled_back'));
ALTER TABLE model_registry
    ADD COLUMN parent_version TEXT,
    ADD COLUMN data_sha256    TEXT,
    ADD COLUMN metrics        JSONB,
    ADD COLUMN decision       TEXT,
    ADD COLUMN run_id         UUID;

-- A clinician's labels for a case: a corrected segmentation (NIfTI on the case's input grid)
-- and/or class labels. They always win over pseudo-labels.
CREATE TABLE clinician_labels (
    case_id         UUID PRIMARY KEY REFERENCES cases(id) ON DELETE CASCADE,
    seg_object_key  TEXT,
    seg_sha256      TEXT,
    grade_gbm       BOOLEAN,
    idh_mutant      BOOLEAN,
    codel_1p19q     BOOLEAN,
    mgmt_methylated BOOLEAN,
    author          TEXT NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Stage I pseudo-labels: one row per (case, task, model); `segmentation` keeps the voxel
-- label and accept-mask objects. `stale` marks those of a model that was rolled back.
CREATE TABLE pseudo_labels (
    case_id          UUID NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    task             TEXT NOT NULL,
    model_version    TEXT NOT NULL,
    accepted         BOOLEAN NOT NULL,
    label            BOOLEAN,
    probability      REAL,
    confidence       REAL,
    uncertainty      REAL,
    accepted_fraction REAL,
    seg_object_key   TEXT,
    seg_sha256       TEXT,
    mask_object_key  TEXT,
    mask_sha256      TEXT,
    stale            BOOLEAN NOT NULL DEFAULT false,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (case_id, task, model_version)
);
CREATE INDEX pseudo_labels_fresh ON pseudo_labels (created_at) WHERE accepted AND NOT stale;

-- Small persistent state of the curate service (the distribution aligner's window).
CREATE TABLE curate_state (
    key        TEXT PRIMARY KEY,
    value      JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Training runs. One runs at a time (the partial unique index); a run whose lease expired is
-- taken over and resumed from its last checkpoint in the object store.
CREATE TABLE train_runs (
    id                UUID PRIMARY KEY,
    role              TEXT NOT NULL,
    parent_version    TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('running', 'promoted', 'rejected', 'failed')),
    data_sha256       TEXT NOT NULL,
    manifest          JSONB NOT NULL,
    lease_owner       UUID,
    lease_until       TIMESTAMPTZ,
    checkpoints       JSONB NOT NULL DEFAULT '{}'::jsonb,
    resumes           INTEGER NOT NULL DEFAULT 0,
    candidate_version TEXT,
    metrics           JSONB,
    error             TEXT,
    started_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at       TIMESTAMPTZ
);
CREATE UNIQUE INDEX train_runs_one_running ON train_runs ((true)) WHERE status = 'running';
