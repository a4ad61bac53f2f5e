-- Files ingested from a spool directory, by claim: re-ingesting a claimed file after a
-- crash (it is still in .processing/) is recognised here and inserts nothing twice.
CREATE TABLE spool_files (
    claim_id     TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    job_ids      TEXT NOT NULL,   -- JSON array
    ingested_at  INTEGER NOT NULL
);
CREATE INDEX spool_files_ingested ON spool_files (ingested_at);
