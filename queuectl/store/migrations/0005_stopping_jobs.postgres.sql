-- A running job canceled with `cancel --kill` is `canceled` at once but keeps its claim
-- (lease_token) until its worker has stopped it, or recovery has, so it can be neither
-- replaced nor forgotten while its process may still run. Recovery looks for such jobs
-- every second; this small index keeps that from scanning every canceled job.
CREATE INDEX jobs_stopping ON jobs (id) WHERE state = 'canceled' AND lease_token IS NOT NULL;
