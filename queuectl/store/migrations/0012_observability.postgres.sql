-- Observability (SPEC 15): what `queuectl metrics` and `queuectl serve` read, kept by
-- triggers in the writes that change it, so that no reader ever counts the jobs table.
-- Writers of an older queuectl do not take the migration lock: keep them out while the
-- counters are rebuilt (see 0006).
LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;

-- 1. Job counts per queue and state (queuectl_jobs{queue,state}): 0006's appended deltas
-- gain the queue. A job whose queue changes (an apply that updates it) moves too.
DELETE FROM job_counts;
ALTER TABLE job_counts ADD COLUMN queue text NOT NULL;
INSERT INTO job_counts (queue, state, n) SELECT queue, state, count(*) FROM jobs GROUP BY queue, state;

-- 2. Attempts ended (queuectl_job_runs_total{queue,outcome} and the histogram
-- queuectl_job_run_duration_seconds), per minute for the dashboard's last hour. As with
-- job_counts, each finish appends a row of its own (many workers finishing at once never
-- queue behind one hot counter row) and queuectl_fold_job_counts() folds them; minutes
-- older than two hours fold into the epoch. They outlive the jobs, which retention
-- deletes. le_ms is the bucket's upper bound in milliseconds, -1 for +Inf; the bounds are
-- queuectl.metrics.DURATION_BUCKETS_S.
CREATE TABLE run_stats (
    minute  timestamptz NOT NULL,
    queue   text NOT NULL,
    outcome text NOT NULL,
    le_ms   bigint NOT NULL,
    n       bigint NOT NULL,
    sum_ms  bigint NOT NULL
);
-- No index: the fold keeps the table to a few rows per minute of the last two hours, and
-- an index would cost every finish one more entry.

CREATE OR REPLACE FUNCTION queuectl_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (queue, state, n)
    SELECT queue, state, count(*) FROM new_jobs GROUP BY queue, state;
    RETURN NULL;
END $$;

-- One trigger call per change of state keeps both counters: a finish pays one call.
CREATE OR REPLACE FUNCTION queuectl_count_moved() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d bigint;
BEGIN
    INSERT INTO job_counts (queue, state, n) VALUES (OLD.queue, OLD.state, -1), (NEW.queue, NEW.state, 1);
    IF OLD.state = 'processing' AND NEW.state IN ('completed', 'failed', 'dead') THEN
        d := greatest(0, floor(extract(epoch FROM NEW.finished_at
                                       - coalesce(NEW.started_at, NEW.finished_at)) * 1000));
        INSERT INTO run_stats (minute, queue, outcome, le_ms, n, sum_ms)
        VALUES (date_trunc('minute', NEW.finished_at), NEW.queue, NEW.state,
                CASE WHEN d <= 50 THEN 50 WHEN d <= 100 THEN 100 WHEN d <= 250 THEN 250
                     WHEN d <= 500 THEN 500 WHEN d <= 1000 THEN 1000 WHEN d <= 2500 THEN 2500
                     WHEN d <= 5000 THEN 5000 WHEN d <= 10000 THEN 10000
                     WHEN d <= 30000 THEN 30000 WHEN d <= 60000 THEN 60000
                     WHEN d <= 300000 THEN 300000 WHEN d <= 900000 THEN 900000
                     WHEN d <= 3600000 THEN 3600000 ELSE -1 END,
                1, d);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION queuectl_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (queue, state, n)
    SELECT queue, state, -count(*) FROM old_jobs GROUP BY queue, state;
    RETURN NULL;
END $$;

DROP TRIGGER job_counts_update ON jobs;
CREATE TRIGGER job_counts_update AFTER UPDATE OF state, queue ON jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.queue IS DISTINCT FROM NEW.queue)
    EXECUTE FUNCTION queuectl_count_moved();

-- One folder at a time, as in 0006; now both counter tables.
CREATE OR REPLACE FUNCTION queuectl_fold_job_counts() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM job_counts GROUP BY queue, state HAVING count(*) > 1)
       AND pg_try_advisory_xact_lock(1903520372) THEN
        WITH folded AS (DELETE FROM job_counts RETURNING queue, state, n)
        INSERT INTO job_counts (queue, state, n)
        SELECT queue, state, sum(n) FROM folded GROUP BY queue, state;
    END IF;
    IF (EXISTS (SELECT 1 FROM run_stats GROUP BY minute, queue, outcome, le_ms
                HAVING count(*) > 1)
        OR EXISTS (SELECT 1 FROM run_stats
                    WHERE minute > 'epoch' AND minute < now() - interval '2 hours'))
       AND pg_try_advisory_xact_lock(1903520373) THEN
        WITH folded AS (DELETE FROM run_stats RETURNING *)
        INSERT INTO run_stats (minute, queue, outcome, le_ms, n, sum_ms)
        SELECT CASE WHEN minute < now() - interval '2 hours' THEN 'epoch' ELSE minute END,
               queue, outcome, le_ms, sum(n), sum(sum_ms)
          FROM folded GROUP BY 1, queue, outcome, le_ms;
    END IF;
END $$;

-- 3. The dashboard pages through waiting jobs by (state, available_at, id): 0001's index
-- gains the id, so ties need no sort, and no write maintains one more index.
DROP INDEX jobs_state_available;
CREATE INDEX jobs_state_available ON jobs (state, available_at, id);

-- 4. queuectl_queue_oldest_pending_age_seconds{queue}: the first due job of each queue,
-- read from this index whatever the other queues hold (walking the index above, a queue
-- behind another's backlog of a million would be a walk of a million). It holds only the
-- jobs that wait for nothing but their time: an enqueue adds an entry, a claim removes it.
CREATE INDEX jobs_pending_queue ON jobs (queue, available_at) WHERE state = 'pending' AND waiting = 0;
