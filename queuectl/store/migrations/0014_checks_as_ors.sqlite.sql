-- Issue 19, after 0013: the CHECK constraints that test a column against three or more
-- values. SQLite builds a temporary b-tree of such an IN list each time it checks a row,
-- and the jobs table's CHECK on state runs in both UPDATEs of every finish-and-claim
-- transaction (callgrind: 740k -> 672k instructions a transaction); the origin and
-- on_state checks run at every insert. ORs of equalities mean the same and cost a few
-- comparisons.
--
-- SQLite cannot alter a CHECK short of copying the table. Changing one to an equivalent
-- condition that every stored row already meets is the kind of change SQLite's ALTER
-- TABLE documentation allows by editing sqlite_schema in place; the dialect runs such a
-- statement with writable_schema on and a new schema cookie, so that every connection
-- parses the tables again (sqlite.py, _edit_schema). Where SQLite refuses schema edits
-- (a build in defensive mode), the checks stay as they were: the same rules, slower.
UPDATE sqlite_schema
   SET sql = replace(replace(replace(sql,
       'state IN
                        (''pending'', ''processing'', ''completed'', ''failed'', ''dead'', ''canceled'')',
       'state = ''pending'' OR state = ''processing'' OR state = ''completed''
                        OR state = ''failed'' OR state = ''dead'' OR state = ''canceled'''),
       'origin IN (''inline'', ''spool'', ''apply'')',
       'origin = ''inline'' OR origin = ''spool'' OR origin = ''apply'''),
       'on_state IN (''success'', ''failure'', ''finished'')',
       'on_state = ''success'' OR on_state = ''failure'' OR on_state = ''finished''')
 WHERE type = 'table' AND name IN ('jobs', 'schedules', 'job_needs');
