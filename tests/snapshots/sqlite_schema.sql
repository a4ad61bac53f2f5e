-- user_version 14
CREATE INDEX job_needs_need ON job_needs (need_id);
CREATE INDEX jobs_applied_pending ON jobs (id) WHERE origin = 'apply' AND state = 'pending';
CREATE INDEX jobs_claim_order ON jobs (priority DESC, created_at, id)
    WHERE state IN ('pending', 'failed') AND waiting = 0;
CREATE INDEX jobs_concurrency ON jobs (concurrency_key)
    WHERE lease_token IS NOT NULL AND concurrency_key IS NOT NULL;
CREATE INDEX jobs_created ON jobs (created_at, id);
CREATE INDEX jobs_finished ON jobs (state, finished_at, id)
    WHERE state = 'completed' OR state = 'dead' OR state = 'canceled';
CREATE INDEX jobs_pending_queue ON jobs (queue, available_at) WHERE state = 'pending' AND waiting = 0;
CREATE INDEX jobs_schedule ON jobs (schedule_id, created_at, id) WHERE schedule_id IS NOT NULL;
CREATE INDEX jobs_schedule_active ON jobs (schedule_id, id)
    WHERE schedule_id IS NOT NULL AND (state = 'pending' OR state = 'processing' OR state = 'failed');
CREATE INDEX jobs_state_available ON jobs (state, available_at, id);
CREATE INDEX jobs_stopping ON jobs (id) WHERE state = 'canceled' AND lease_token IS NOT NULL;
CREATE INDEX schedules_due ON schedules (next_slot_at) WHERE suspended = FALSE;
CREATE INDEX spool_files_ingested ON spool_files (ingested_at);
CREATE TABLE config (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE job_counts (
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;
CREATE TABLE job_needs (
    job_id   TEXT NOT NULL,
    need_id  TEXT NOT NULL,
    on_state TEXT NOT NULL CHECK (on_state = 'success' OR on_state = 'failure' OR on_state = 'finished'),
    PRIMARY KEY (job_id, need_id)
) WITHOUT ROWID;
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
    state            TEXT NOT NULL CHECK (state = 'pending' OR state = 'processing' OR state = 'completed'
                        OR state = 'failed' OR state = 'dead' OR state = 'canceled'),
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
    spec_hash        TEXT NOT NULL,
    output_tail      TEXT NOT NULL DEFAULT ''
, source_commit TEXT, origin TEXT NOT NULL DEFAULT 'inline'
    CHECK (origin = 'inline' OR origin = 'spool' OR origin = 'apply'), source_file TEXT, schedule_id TEXT, needs TEXT NOT NULL DEFAULT '[]', waiting INTEGER NOT NULL DEFAULT 0, has_dependents INTEGER NOT NULL DEFAULT 0, retry TEXT, deadline_ms INTEGER, first_started_at INTEGER, concurrency_key TEXT, concurrency_limit INTEGER NOT NULL DEFAULT 1) WITHOUT ROWID;
CREATE TABLE run_stats (
    minute  INTEGER NOT NULL,
    queue   TEXT NOT NULL,
    outcome TEXT NOT NULL,
    le_ms   INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    sum_ms  INTEGER NOT NULL,
    PRIMARY KEY (minute, queue, outcome, le_ms)
) WITHOUT ROWID;
CREATE TABLE schedules (
    id             TEXT PRIMARY KEY,
    template       TEXT NOT NULL,              -- JSON: the job spec of every run
    schedule       TEXT NOT NULL,              -- JSON: cron/every, timezone, catchup, ...
    spec_hash      TEXT NOT NULL,
    suspended      INTEGER NOT NULL DEFAULT 0,
    last_tick_at   INTEGER NOT NULL,           -- slots up to here are created or missed
    missed         INTEGER NOT NULL DEFAULT 0,
    last_missed_at INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    origin         TEXT NOT NULL DEFAULT 'inline' CHECK (origin = 'inline' OR origin = 'spool' OR origin = 'apply'),
    source_file    TEXT,
    source_commit  TEXT
, next_slot_at INTEGER, last_success_at INTEGER) WITHOUT ROWID;
CREATE TABLE spool_files (
    claim_id     TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    job_ids      TEXT NOT NULL,   -- JSON array
    ingested_at  INTEGER NOT NULL
);
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
CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
END;
CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs
BEGIN
    INSERT INTO job_counts (queue, state, n) VALUES (NEW.queue, NEW.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER job_counts_update AFTER UPDATE OF state, queue ON jobs
WHEN OLD.state <> NEW.state OR OLD.queue <> NEW.queue
BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
    INSERT INTO job_counts (queue, state, n) VALUES (NEW.queue, NEW.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER run_stats_finish AFTER UPDATE OF state ON jobs
WHEN OLD.state = 'processing' AND (NEW.state = 'completed' OR NEW.state = 'failed' OR NEW.state = 'dead')
BEGIN
    INSERT INTO run_stats (minute, queue, outcome, le_ms, n, sum_ms)
    SELECT NEW.finished_at / 60000 * 60000, NEW.queue, NEW.state,
           CASE WHEN d <= 50 THEN 50 WHEN d <= 100 THEN 100 WHEN d <= 250 THEN 250
                WHEN d <= 500 THEN 500 WHEN d <= 1000 THEN 1000 WHEN d <= 2500 THEN 2500
                WHEN d <= 5000 THEN 5000 WHEN d <= 10000 THEN 10000
                WHEN d <= 30000 THEN 30000 WHEN d <= 60000 THEN 60000
                WHEN d <= 300000 THEN 300000 WHEN d <= 900000 THEN 900000
                WHEN d <= 3600000 THEN 3600000 ELSE -1 END,
           1, d
      FROM (SELECT max(0, NEW.finished_at - coalesce(NEW.started_at, NEW.finished_at)) AS d)
     WHERE true
        ON CONFLICT (minute, queue, outcome, le_ms)
        DO UPDATE SET n = n + 1, sum_ms = sum_ms + excluded.sum_ms;
END;
CREATE TRIGGER schedule_last_success AFTER UPDATE OF state ON jobs
WHEN NEW.state = 'completed' AND NEW.schedule_id IS NOT NULL
BEGIN
    UPDATE schedules SET last_success_at = NEW.finished_at
     WHERE id = NEW.schedule_id
       AND (last_success_at IS NULL OR last_success_at < NEW.finished_at);
END;
