-- Dependencies, retry rules, deadlines and concurrency keys (SPEC 12-13).
-- job_needs holds the edges; jobs.waiting counts a job's needs not met yet, kept by the
-- store as parents end, so the claim skips waiting jobs through its index instead of
-- checking their needs; has_dependents spares jobs without children that bookkeeping.
ALTER TABLE jobs ADD COLUMN needs TEXT NOT NULL DEFAULT '[]';   -- JSON, as declared
ALTER TABLE jobs ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN has_dependents INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN retry TEXT;                          -- JSON, or NULL: the config's
ALTER TABLE jobs ADD COLUMN deadline_ms INTEGER;
ALTER TABLE jobs ADD COLUMN first_started_at INTEGER;
ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;
ALTER TABLE jobs ADD COLUMN concurrency_limit INTEGER NOT NULL DEFAULT 1;
UPDATE jobs SET first_started_at = started_at;
CREATE TABLE job_needs (
    job_id   TEXT NOT NULL,
    need_id  TEXT NOT NULL,
    on_state TEXT NOT NULL CHECK (on_state IN ('success', 'failure', 'finished')),
    PRIMARY KEY (job_id, need_id)
) WITHOUT ROWID;
CREATE INDEX job_needs_need ON job_needs (need_id);
DROP INDEX jobs_claim_order;
CREATE INDEX jobs_claim_order ON jobs (priority DESC, created_at, id)
    WHERE state IN ('pending', 'failed') AND waiting = 0;
-- The jobs holding a key: running, or canceled and still stopping (both keep a claim).
CREATE INDEX jobs_concurrency ON jobs (concurrency_key)
    WHERE lease_token IS NOT NULL AND concurrency_key IS NOT NULL;
-- A schedule's runs not ended yet: what `overlap` looks at on every tick.
CREATE INDEX jobs_schedule_active ON jobs (schedule_id, id)
    WHERE schedule_id IS NOT NULL AND state IN ('pending', 'processing', 'failed');
