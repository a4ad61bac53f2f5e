-- Nothing to do here: PostgreSQL evaluates an IN list without building a table, and its
-- planner proves that the queries' OR conditions imply these indexes' IN predicates. The
-- SQLite side of this step rewrites its partial indexes and a trigger (see there).
SELECT 1;
