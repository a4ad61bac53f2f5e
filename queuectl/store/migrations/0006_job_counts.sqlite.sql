-- Nothing to do on SQLite: 0004 keeps its job counts (one writer, no hot row).
SELECT 1;
