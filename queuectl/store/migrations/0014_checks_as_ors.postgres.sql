-- Nothing to do here: PostgreSQL checks an IN list without building a table. The SQLite
-- side of this step rewrites its CHECK constraints (see there).
SELECT 1;
