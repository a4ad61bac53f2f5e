-- Observability (SPEC 15): what `queuectl metrics` and `queuectl serve` read, kept by
-- triggers in the writes that change it, so that no reader ever counts the jobs table.
--
-- 1. Job counts per queue and state (queuectl_jobs{queue,state}): 0004's counters gain
-- the queue. A job whose queue changes (an apply that updates it) moves between rows too.
DROP TRIGGER job_counts_insert;
DROP TRIGGER job_counts_update;
DROP TRIGGER job_counts_delete;
DROP TABLE job_counts;

CREATE TABLE job_counts (
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;

INSERT INTO job_counts (queue, state, n)
SELECT queue, state, count(*) FROM jobs GROUP BY queue, state;

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

CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
END;

-- 2. Attempts ended (queuectl_job_runs_total{queue,outcome} and the histogram
-- queuectl_job_run_duration_seconds), per minute for the dashboard's last hour: one
-- counter row per (minute, queue, outcome, duration bucket), bumped by the finish's own
-- write. They outlive the jobs, which retention deletes. Minutes older than two hours are
-- folded into minute 0 by the background prune (Queue.prune), so the table stays small.
-- le_ms is the bucket's upper bound in milliseconds, -1 for +Inf; the bounds are
-- queuectl.metrics.DURATION_BUCKETS_S.
CREATE TABLE run_stats (
    minute  INTEGER NOT NULL,
    queue   TEXT NOT NULL,
    outcome TEXT NOT NULL,
    le_ms   INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    sum_ms  INTEGER NOT NULL,
    PRIMARY KEY (minute, queue, outcome, le_ms)
) WITHOUT ROWID;

CREATE TRIGGER run_stats_finish AFTER UPDATE OF state ON jobs
WHEN OLD.state = 'processing' AND NEW.state IN ('completed', 'failed', 'dead')
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

-- 3. The dashboard pages through waiting jobs by (state, available_at, id): 0001's index
-- on (state, available_at) gains the id, so ties (a batch enqueued at one instant) need
-- no sort, and no write maintains one more index.
DROP INDEX jobs_state_available;
CREATE INDEX jobs_state_available ON jobs (state, available_at, id);

-- 4. queuectl_queue_oldest_pending_age_seconds{queue}: the first due job of each queue,
-- read from this index whatever the other queues hold (walking the index above, a queue
-- behind another's backlog of a million would be a walk of a million). It holds only the
-- jobs that wait for nothing but their time: an enqueue adds an entry, a claim removes it.
CREATE INDEX jobs_pending_queue ON jobs (queue, available_at) WHERE state = 'pending' AND waiting = 0;
