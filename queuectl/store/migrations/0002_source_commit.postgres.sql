-- Nothing to do on PostgreSQL: its 0001 created jobs.source_commit already.
SELECT 1;
