-- Retention (SPEC 14): pruning walks the ended jobs of one state oldest first, through
-- this index, never the whole table.
CREATE INDEX jobs_finished ON jobs (state, finished_at, id)
    WHERE state IN ('completed', 'dead', 'canceled');
