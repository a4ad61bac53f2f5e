-- queuectl schema version 1 for PostgreSQL (the SQLite migrations 0001-0003 in one).
CREATE TABLE jobs (
    id               text PRIMARY KEY,
    command          jsonb NOT NULL,           -- a string (shell) or an array (exec)
    priority         integer NOT NULL DEFAULT 0,
    run_at           timestamptz,
    max_retries      integer NOT NULL,
    timeout_ms       integer,                  -- NULL: the worker's config job_timeout_ms
    env              jsonb NOT NULL DEFAULT '{}',
    cwd              text,
    queue            text NOT NULL DEFAULT 'default',
    labels           jsonb NOT NULL DEFAULT '{}',
    state            text NOT NULL CHECK (state IN
                        ('pending', 'processing', 'completed', 'failed', 'dead', 'canceled')),
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    available_at     timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    exit_code        integer,
    last_error       text,
    worker_id        text,
    lease_token      text,                     -- fencing: a result is recorded only with this token
    lease_expires_at timestamptz,
    source           text NOT NULL,
    source_commit    text,
    spec_hash        text NOT NULL,
    output_tail      text NOT NULL DEFAULT ''
);

-- The claim walks this index in claim order; finished jobs are not in it at all.
CREATE INDEX jobs_claim_order ON jobs (priority DESC, created_at, id)
    WHERE state IN ('pending', 'failed');
CREATE INDEX jobs_state_available ON jobs (state, available_at);
CREATE INDEX jobs_created ON jobs (created_at, id);

CREATE TABLE workers (
    id               text PRIMARY KEY,
    pid              integer NOT NULL,
    host             text NOT NULL,
    queues           jsonb NOT NULL DEFAULT '[]',
    started_at       timestamptz NOT NULL,
    heartbeat_at     timestamptz NOT NULL,
    lease_expires_at timestamptz NOT NULL,
    stop_requested   boolean NOT NULL DEFAULT false
);

CREATE TABLE config (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE spool_files (
    claim_id     text PRIMARY KEY,
    name         text NOT NULL,
    content_hash text NOT NULL,
    job_ids      jsonb NOT NULL,
    ingested_at  timestamptz NOT NULL
);
CREATE INDEX spool_files_ingested ON spool_files (ingested_at);
