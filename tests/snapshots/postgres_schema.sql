-- version 14
config(key text NOT NULL, value text NOT NULL)
job_counts(state text NOT NULL, n bigint NOT NULL, queue text NOT NULL)
job_needs(job_id text NOT NULL, need_id text NOT NULL, on_state text NOT NULL)
jobs(id text NOT NULL, command jsonb NOT NULL, priority integer NOT NULL DEFAULT 0, run_at timestamp with time zone, max_retries integer NOT NULL, timeout_ms integer, env jsonb NOT NULL DEFAULT '{}'::jsonb, cwd text, queue text NOT NULL DEFAULT 'default'::text, labels jsonb NOT NULL DEFAULT '{}'::jsonb, state text NOT NULL, attempts integer NOT NULL DEFAULT 0, created_at timestamp with time zone NOT NULL, updated_at timestamp with time zone NOT NULL, available_at timestamp with time zone NOT NULL, started_at timestamp with time zone, finished_at timestamp with time zone, exit_code integer, last_error text, worker_id text, lease_token text, lease_expires_at timestamp with time zone, source_commit text, spec_hash text NOT NULL, output_tail text NOT NULL DEFAULT ''::text, origin text NOT NULL DEFAULT 'inline'::text, source_file text, schedule_id text, needs jsonb NOT NULL DEFAULT '[]'::jsonb, waiting integer NOT NULL DEFAULT 0, has_dependents boolean NOT NULL DEFAULT false, retry jsonb, deadline_ms bigint, first_started_at timestamp with time zone, concurrency_key text, concurrency_limit integer NOT NULL DEFAULT 1)
queuectl_schema(version integer NOT NULL)
run_stats(minute timestamp with time zone NOT NULL, queue text NOT NULL, outcome text NOT NULL, le_ms bigint NOT NULL, n bigint NOT NULL, sum_ms bigint NOT NULL)
schedules(id text NOT NULL, template jsonb NOT NULL, schedule jsonb NOT NULL, spec_hash text NOT NULL, suspended boolean NOT NULL DEFAULT false, last_tick_at timestamp with time zone NOT NULL, missed integer NOT NULL DEFAULT 0, last_missed_at timestamp with time zone, created_at timestamp with time zone NOT NULL, updated_at timestamp with time zone NOT NULL, origin text NOT NULL DEFAULT 'inline'::text, source_file text, source_commit text, next_slot_at timestamp with time zone, last_success_at timestamp with time zone)
spool_files(claim_id text NOT NULL, name text NOT NULL, content_hash text NOT NULL, job_ids jsonb NOT NULL, ingested_at timestamp with time zone NOT NULL)
workers(id text NOT NULL, pid integer NOT NULL, host text NOT NULL, queues jsonb NOT NULL DEFAULT '[]'::jsonb, started_at timestamp with time zone NOT NULL, heartbeat_at timestamp with time zone NOT NULL, lease_expires_at timestamp with time zone NOT NULL, stop_requested boolean NOT NULL DEFAULT false)
config config_pkey PRIMARY KEY (key)
job_needs job_needs_on_state_check CHECK ((on_state = ANY (ARRAY['success'::text, 'failure'::text, 'finished'::text])))
job_needs job_needs_pkey PRIMARY KEY (job_id, need_id)
jobs jobs_origin_check CHECK ((origin = ANY (ARRAY['inline'::text, 'spool'::text, 'apply'::text])))
jobs jobs_pkey PRIMARY KEY (id)
jobs jobs_state_check CHECK ((state = ANY (ARRAY['pending'::text, 'processing'::text, 'completed'::text, 'failed'::text, 'dead'::text, 'canceled'::text])))
schedules schedules_origin_check CHECK ((origin = ANY (ARRAY['inline'::text, 'spool'::text, 'apply'::text])))
schedules schedules_pkey PRIMARY KEY (id)
spool_files spool_files_pkey PRIMARY KEY (claim_id)
workers workers_pkey PRIMARY KEY (id)
CREATE INDEX job_needs_need ON job_needs USING btree (need_id)
CREATE INDEX jobs_applied_pending ON jobs USING btree (id) WHERE ((origin = 'apply'::text) AND (state = 'pending'::text))
CREATE INDEX jobs_claim_order ON jobs USING btree (priority DESC, created_at, id) WHERE ((state = ANY (ARRAY['pending'::text, 'failed'::text])) AND (waiting = 0))
CREATE INDEX jobs_concurrency ON jobs USING btree (concurrency_key) WHERE ((lease_token IS NOT NULL) AND (concurrency_key IS NOT NULL))
CREATE INDEX jobs_created ON jobs USING btree (created_at, id)
CREATE INDEX jobs_finished ON jobs USING btree (state, finished_at, id) WHERE (state = ANY (ARRAY['completed'::text, 'dead'::text, 'canceled'::text]))
CREATE INDEX jobs_pending_queue ON jobs USING btree (queue, available_at) WHERE ((state = 'pending'::text) AND (waiting = 0))
CREATE INDEX jobs_schedule ON jobs USING btree (schedule_id, created_at, id) WHERE (schedule_id IS NOT NULL)
CREATE INDEX jobs_schedule_active ON jobs USING btree (schedule_id, id) WHERE ((schedule_id IS NOT NULL) AND (state = ANY (ARRAY['pending'::text, 'processing'::text, 'failed'::text])))
CREATE INDEX jobs_state_available ON jobs USING btree (state, available_at, id)
CREATE INDEX jobs_stopping ON jobs USING btree (id) WHERE ((state = 'canceled'::text) AND (lease_token IS NOT NULL))
CREATE INDEX schedules_due ON schedules USING btree (next_slot_at) WHERE (suspended = false)
CREATE INDEX spool_files_ingested ON spool_files USING btree (ingested_at)
CREATE UNIQUE INDEX config_pkey ON config USING btree (key)
CREATE UNIQUE INDEX job_needs_pkey ON job_needs USING btree (job_id, need_id)
CREATE UNIQUE INDEX jobs_pkey ON jobs USING btree (id)
CREATE UNIQUE INDEX schedules_pkey ON schedules USING btree (id)
CREATE UNIQUE INDEX spool_files_pkey ON spool_files USING btree (claim_id)
CREATE UNIQUE INDEX workers_pkey ON workers USING btree (id)
CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_jobs FOR EACH STATEMENT EXECUTE FUNCTION queuectl_count_deleted()
CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_jobs FOR EACH STATEMENT EXECUTE FUNCTION queuectl_count_inserted()
CREATE TRIGGER job_counts_update AFTER UPDATE OF state, queue ON jobs FOR EACH ROW WHEN (((old.state IS DISTINCT FROM new.state) OR (old.queue IS DISTINCT FROM new.queue))) EXECUTE FUNCTION queuectl_count_moved()
CREATE TRIGGER schedule_last_success AFTER UPDATE OF state ON jobs FOR EACH ROW WHEN (((new.state = 'completed'::text) AND (new.schedule_id IS NOT NULL))) EXECUTE FUNCTION queuectl_schedule_last_success()
CREATE OR REPLACE FUNCTION queuectl_count_deleted()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    INSERT INTO job_counts (queue, state, n)
    SELECT queue, state, -count(*) FROM old_jobs GROUP BY queue, state;
    RETURN NULL;
END $function$
CREATE OR REPLACE FUNCTION queuectl_count_inserted()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    INSERT INTO job_counts (queue, state, n)
    SELECT queue, state, count(*) FROM new_jobs GROUP BY queue, state;
    RETURN NULL;
END $function$
CREATE OR REPLACE FUNCTION queuectl_count_moved()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
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
END $function$
CREATE OR REPLACE FUNCTION queuectl_fold_job_counts()
 RETURNS void
 LANGUAGE plpgsql
AS $function$
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
END $function$
CREATE OR REPLACE FUNCTION queuectl_schedule_last_success()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    UPDATE schedules SET last_success_at = NEW.finished_at
     WHERE id = NEW.schedule_id
       AND (last_success_at IS NULL OR last_success_at < NEW.finished_at);
    RETURN NULL;
END $function$
