-- GMMAS schema, first version: cases and their volumes, per-stage runs, analyses,
-- the model registry and an audit log.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE cases (
    id          UUID PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    -- The hospital's own reference; never written to logs.
    case_ref    TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('received', 'preprocessing', 'analyzing', 'done', 'failed')),
    error_stage TEXT,
    error       TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, case_ref)
);
CREATE INDEX cases_tenant_created ON cases (tenant_id, created_at DESC);

CREATE TABLE volumes (
    case_id     UUID NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    modality    TEXT NOT NULL CHECK (modality IN ('t1', 't1ce', 't2', 'flair')),
    object_key  TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    dims        INTEGER[] NOT NULL,
    voxel_mm    REAL[] NOT NULL,
    PRIMARY KEY (case_id, modality)
);

-- One row per (case, stage): the idempotency key of every handler.
CREATE TABLE stage_runs (
    case_id     UUID NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    stage       TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    error       TEXT,
    -- The encoded message this stage published, so a redelivery re-publishes it unchanged.
    output      BYTEA,
    PRIMARY KEY (case_id, stage)
);

CREATE TABLE model_registry (
    version      TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    weights_uri  TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    config       JSONB NOT NULL DEFAULT '{}'::jsonb,
    status       TEXT NOT NULL CHECK (status IN ('current', 'candidate', 'retired')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    promoted_at  TIMESTAMPTZ
);
CREATE UNIQUE INDEX model_registry_one_current ON model_registry (status) WHERE status = 'current';

CREATE TABLE analyses (
    id                 UUID PRIMARY KEY,
    case_id            UUID NOT NULL UNIQUE REFERENCES cases(id) ON DELETE CASCADE,
    model_version      TEXT NOT NULL,
    input_sha256       JSONB NOT NULL,
    device             TEXT NOT NULL,
    seg_object_key     TEXT NOT NULL,
    seg_sha256         TEXT NOT NULL,
    ncr_ml             DOUBLE PRECISION NOT NULL,
    ed_ml              DOUBLE PRECISION NOT NULL,
    et_ml              DOUBLE PRECISION NOT NULL,
    wt_ml              DOUBLE PRECISION NOT NULL,
    tc_ml              DOUBLE PRECISION NOT NULL,
    ncr_fraction       DOUBLE PRECISION NOT NULL,
    ed_fraction        DOUBLE PRECISION NOT NULL,
    et_fraction        DOUBLE PRECISION NOT NULL,
    p_grade_gbm        REAL NOT NULL,
    p_idh_mutant       REAL NOT NULL,
    p_codel_1p19q      REAL NOT NULL,
    p_mgmt_methylated  REAL NOT NULL,
    missing_modalities TEXT[] NOT NULL DEFAULT '{}',
    inference_ms       BIGINT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE audit_log (
    id        BIGSERIAL PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    tenant_id TEXT,
    case_id   UUID,
    detail    JSONB NOT NULL DEFAULT '{}'::jsonb
);
