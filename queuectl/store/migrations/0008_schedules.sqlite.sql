-- Schedules (SPEC 11): one durable row per schedule, so no tick state lives in a
-- scheduler's memory, and jobs.schedule_id naming the schedule a run belongs to.
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
    origin         TEXT NOT NULL DEFAULT 'inline' CHECK (origin IN ('inline', 'spool', 'apply')),
    source_file    TEXT,
    source_commit  TEXT
) WITHOUT ROWID;
ALTER TABLE jobs ADD COLUMN schedule_id TEXT;
CREATE INDEX jobs_schedule ON jobs (schedule_id, created_at, id) WHERE schedule_id IS NOT NULL;
