-- Nothing to do on PostgreSQL here: its job counts come with 0006.
SELECT 1;
