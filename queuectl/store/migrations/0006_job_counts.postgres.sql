-- Job counts per state, so `status` never counts a million rows, without one hot counter
-- row that every worker's claim and finish would queue behind: each change appends its
-- delta as a row of its own (appends never wait on one another; inserts and deletes
-- append one row per state per statement, a change of state two rows), and
-- queuectl_fold_job_counts() folds the appended rows into one per state (workers call it
-- with each heartbeat, and after a big insert). A state's count is the sum of its rows.
-- Writers of an older queuectl do not take the migration lock: keep them out until the
-- triggers exist, so no change falls between the first count and the first trigger.
LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE job_counts (
    state text NOT NULL,
    n     bigint NOT NULL
);

INSERT INTO job_counts (state, n) SELECT state, count(*) FROM jobs GROUP BY state;

CREATE FUNCTION queuectl_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (state, n) SELECT state, count(*) FROM new_jobs GROUP BY state;
    RETURN NULL;
END $$;

-- Per row, and only when the state changes: claims and results move one job at a time,
-- and a lease renewal (no change of state) costs nothing here.
CREATE FUNCTION queuectl_count_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (state, n) VALUES (OLD.state, -1), (NEW.state, 1);
    RETURN NULL;
END $$;

CREATE FUNCTION queuectl_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (state, n) SELECT state, -count(*) FROM old_jobs GROUP BY state;
    RETURN NULL;
END $$;

CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION queuectl_count_inserted();
CREATE TRIGGER job_counts_update AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION queuectl_count_moved();
CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION queuectl_count_deleted();

-- One folder at a time (the others skip it: there is nothing to wait for). Rows appended
-- by transactions still open are not visible here, so they stay, to be folded next time.
CREATE FUNCTION queuectl_fold_job_counts() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM job_counts GROUP BY state HAVING count(*) > 1)
       AND pg_try_advisory_xact_lock(1903520372) THEN
        WITH folded AS (DELETE FROM job_counts RETURNING state, n)
        INSERT INTO job_counts (state, n) SELECT state, sum(n) FROM folded GROUP BY state;
    END IF;
END $$;
