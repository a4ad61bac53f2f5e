-- The git commit a job was applied from (`queuectl apply` in a git work tree).
ALTER TABLE jobs ADD COLUMN source_commit TEXT;
