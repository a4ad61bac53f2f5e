-- Schedules (SPEC 11): one durable row per schedule, so no tick state lives in a
-- scheduler's memory, and jobs.schedule_id naming the schedule a run belongs to.
CREATE TABLE schedules (
    id             text PRIMARY KEY,
    template       jsonb NOT NULL,             -- the job spec of every run
    schedule       jsonb NOT NULL,             -- cron/every, timezone, catchup, ...
    spec_hash      text NOT NULL,
    suspended      boolean NOT NULL DEFAULT false,
    last_tick_at   timestamptz NOT NULL,       -- slots up to here are created or missed
    missed         integer NOT NULL DEFAULT 0,
    last_missed_at timestamptz,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    origin         text NOT NULL DEFAULT 'inline' CHECK (origin IN ('inline', 'spool', 'apply')),
    source_file    text,
    source_commit  text
);
ALTER TABLE jobs ADD COLUMN schedule_id text;
CREATE INDEX jobs_schedule ON jobs (schedule_id, created_at, id) WHERE schedule_id IS NOT NULL;
