-- A job's origin as a column of its own (inline, spool, apply) beside the spec file it
-- came from, instead of one `origin:file` text that queries had to pick apart.
ALTER TABLE jobs ADD COLUMN origin text NOT NULL DEFAULT 'inline'
    CHECK (origin IN ('inline', 'spool', 'apply'));
ALTER TABLE jobs ADD COLUMN source_file text;
UPDATE jobs SET origin = split_part(source, ':', 1),
                source_file = substr(source, strpos(source, ':') + 1)
 WHERE source LIKE 'spool:%' OR source LIKE 'apply:%';
ALTER TABLE jobs DROP COLUMN source;
CREATE INDEX jobs_applied_pending ON jobs (id) WHERE origin = 'apply' AND state = 'pending';
