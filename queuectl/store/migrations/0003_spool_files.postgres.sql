-- Nothing to do on PostgreSQL: its 0001 created spool_files already.
SELECT 1;
