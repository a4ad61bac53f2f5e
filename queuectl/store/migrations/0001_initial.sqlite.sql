-- queuectl schema version 1. Instants are integer milliseconds since the Unix epoch (UTC).
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    command          TEXT NOT NULL,            -- JSON: a string (shell) or an array (exec)
    priority         INTEGER NOT NULL DEFAULT 0,
    run_at           INTEGER,
    max_retries      INTEGER NOT NULL,
    timeout_ms       INTEGER,                  -- NULL: the worker's config job_timeout_ms
    env              TEXT NOT NULL DEFAULT '{}',
    cwd              TEXT,
    queue            TEXT NOT NULL DEFAULT 'default',
    labels           TEXT NOT NULL DEFAULT '{}',
    state            TEXT NOT NULL CHECK (state IN
                        ('pending', 'processing', 'completed', 'failed', 'dead', 'canceled')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    available_at     INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    exit_code        INTEGER,
    last_error       TEXT,
    worker_id        TEXT,
    lease_token      TEXT,                     -- fencing: a result is recorded only with this token
    lease_expires_at INTEGER,
    source           TEXT NOT NULL,
    spec_hash        TEXT NOT NULL,
    output_tail      TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;

-- The claim walks this index in claim order; finished jobs are not in it at all.
CREATE INDEX jobs_claim_order ON jobs (priority DESC, created_at, id)
    WHERE state IN ('pending', 'failed');
CREATE INDEX jobs_state_available ON jobs (state, available_at);
CREATE INDEX jobs_created ON jobs (created_at, id);

CREATE TABLE workers (
    id               TEXT PRIMARY KEY,
    pid              INTEGER NOT NULL,
    host             TEXT NOT NULL,
    queues           TEXT NOT NULL DEFAULT '[]',
    started_at       INTEGER NOT NULL,
    heartbeat_at     INTEGER NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    stop_requested   INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE config (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
