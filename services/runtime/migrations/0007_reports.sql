-- Reports written by the report service: one row per version (1 = first; a regeneration through
-- the LLM adds the next). The newest version is the one the API serves; older ones are kept.
CREATE TABLE reports (
    id               UUID PRIMARY KEY,
    case_id          UUID NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    analysis_id      UUID NOT NULL,
    version          INTEGER NOT NULL,
    -- 'llm': the local model's text passed validation; 'fallback': built from the KB rules.
    path             TEXT NOT NULL CHECK (path IN ('llm', 'fallback')),
    -- Why the fallback was used: 'disabled', 'unavailable' (down, slow, HTTP error), 'invalid'.
    fallback_reason  TEXT,
    llm_backend      TEXT,
    llm_model        TEXT,
    llm_model_digest TEXT,
    llm_attempts     INTEGER NOT NULL DEFAULT 0,
    prompt_sha256    TEXT,
    kb_version       TEXT NOT NULL,
    retrieval        TEXT NOT NULL,
    -- The report itself (summary, chart, treatment, disclaimer, citations, provenance).
    body             JSONB NOT NULL,
    -- The same, rendered as a self-contained, printable HTML page.
    html             TEXT NOT NULL,
    -- Every LLM attempt: outcome, time, and the validation errors that rejected it.
    attempts         JSONB NOT NULL DEFAULT '[]'::jsonb,
    duration_ms      BIGINT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (case_id, version)
);
CREATE INDEX reports_fallback_unavailable ON reports (created_at) WHERE path = 'fallback' AND fallback_reason = 'unavailable';
