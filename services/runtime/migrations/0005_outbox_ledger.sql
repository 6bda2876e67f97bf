-- Reliability: an outbox for every event that follows a database commit, an object ledger so
-- that no stored object is left without an owner, and per-attempt bookkeeping of stages.

-- Events written in the same transaction as the state they announce; a relay publishes them
-- (with their Nats-Msg-Id, so a second publish is dropped by the stream) until acknowledged.
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    subject      TEXT NOT NULL,
    msg_id       TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;

-- Every object a service writes is recorded first as `pending` under the attempt that writes
-- it; the commit that references it makes it `live`. Pending objects of attempts that lost or
-- died are deleted by the cleanup, so the store holds only what the database points to.
CREATE TABLE objects (
    bucket      TEXT NOT NULL,
    key         TEXT NOT NULL,
    case_id     UUID,
    owner       UUID NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'live')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, key)
);
CREATE INDEX objects_owner ON objects (owner);
CREATE INDEX objects_pending ON objects (created_at) WHERE state = 'pending';
CREATE INDEX objects_case ON objects (case_id);

-- The attempt currently holding a stage, when it last showed signs of life, and how often the
-- sweeper has had to re-drive the case.
ALTER TABLE stage_runs
    ADD COLUMN attempt_id   UUID,
    ADD COLUMN heartbeat_at TIMESTAMPTZ;
ALTER TABLE cases ADD COLUMN redrives INTEGER NOT NULL DEFAULT 0;
CREATE INDEX cases_open ON cases (updated_at) WHERE status NOT IN ('done', 'failed');
