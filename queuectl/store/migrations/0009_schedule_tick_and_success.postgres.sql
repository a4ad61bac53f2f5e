-- next_slot_at: when the schedule next needs a tick (a write that changes its timing sets
-- it to now), so a tick reads only the schedules due and a scheduler finds its next wake-up
-- in the index, however many schedules there are.
ALTER TABLE schedules ADD COLUMN next_slot_at timestamptz;
UPDATE schedules SET next_slot_at = last_tick_at;
CREATE INDEX schedules_due ON schedules (next_slot_at) WHERE suspended = FALSE;
-- The dead-man switch (SPEC 11, expect_success_within) and the last-success metric need
-- when a schedule's run last completed. A trigger keeps it, so it survives the pruning
-- of old runs and costs the hot finish path nothing for jobs that are not runs.
ALTER TABLE schedules ADD COLUMN last_success_at timestamptz;
UPDATE schedules SET last_success_at = (
    SELECT max(finished_at) FROM jobs WHERE schedule_id = schedules.id AND state = 'completed');
CREATE FUNCTION queuectl_schedule_last_success() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE schedules SET last_success_at = NEW.finished_at
     WHERE id = NEW.schedule_id
       AND (last_success_at IS NULL OR last_success_at < NEW.finished_at);
    RETURN NULL;
END $$;
CREATE TRIGGER schedule_last_success AFTER UPDATE OF state ON jobs
FOR EACH ROW WHEN (NEW.state = 'completed' AND NEW.schedule_id IS NOT NULL)
EXECUTE FUNCTION queuectl_schedule_last_success();
