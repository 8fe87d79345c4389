-- The queue: submit, claim, renew, release, and the vacuum that keeps claims fast.
--
-- Submit: one transaction per submit. Each batch is checked on its own by the client (repeats, two new
-- tasks on one stem), its first occurrences copied into a temporary table (dropped at commit), their
-- stems checked against the unfinished tasks (the batches before it included: their rows are this
-- transaction's), then inserted. The client holds a batch or two at a time.

-- name: claim
-- PREPAREd (see connection.Prepared): $1 how many, $2 owner, $3 lease seconds; the pairs placeholder
-- is empty, or claim_pairs_filter ($4 engines, $5 models).
WITH q AS (
    -- task_queue in claim order: one ordered scan of ix_task_queue_claim_order, no sort. Locking
    -- the queue rows (SKIP LOCKED) spreads concurrent claimers over different tasks; every other
    -- writer of a queued task locks its queue row before the task (lifecycle.sql lock_queued), so this lock
    -- order (queue row, then task) never deadlocks with the store's own statements.
    SELECT task_id FROM task_queue
    WHERE ready_at <= now() {pairs}
    ORDER BY priority DESC, created_at, task_id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), u AS (
    -- No indexed column changes: a HOT update. The status is re-checked on the current row
    -- version; the side-table trigger then drops the queue rows and adds the leases.
    UPDATE tasks t
    SET status = 'in_progress', attempt = t.attempt + 1, lease_owner = $2,
        lease_expires_at = now() + make_interval(secs => $3),
        started_at = now(), retry_at = NULL, updated_at = now()  -- set here: the stamp trigger stays idle
    WHERE t.id = ANY(ARRAY(SELECT task_id FROM q))
      AND t.status IN ('pending', 'failed') AND (t.status = 'pending' OR t.retry_at <= now())
    RETURNING t.id, t.attempt, t.input_uri, t.output_uri, t.engine, t.model, t.options, t.priority,
              t.retries, t.max_retries, t.backoff_factor, t.lease_expires_at, t.created_at, t.crashes, t.releases
), a AS (
    INSERT INTO task_attempts (task_id, attempt, worker, started_at)
    SELECT id, attempt, $2, now() FROM u
)
-- options as text: one parse per distinct options document (views.options_of), not one per row.
SELECT id, attempt, input_uri, output_uri, engine, model, CAST(options AS text) AS options, priority, retries,
       max_retries, backoff_factor, lease_expires_at, crashes, releases
FROM u ORDER BY priority DESC, created_at, id

-- name: claim_pairs_filter
AND (engine, model) IN (SELECT * FROM unnest($4, $5))

-- name: renew
UPDATE tasks t SET lease_expires_at = now() + make_interval(secs => CAST(:lease_s AS double precision)),
    updated_at = now()
FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[])) AS v(id, attempt)
WHERE t.id = v.id AND t.attempt = v.attempt AND t.status = 'in_progress' AND t.lease_owner = :owner
RETURNING t.id, t.attempt

-- name: release
WITH u AS (
    UPDATE tasks t SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL
    FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[])) AS v(id, attempt)
    WHERE t.id = v.id AND t.attempt = v.attempt AND t.status = 'in_progress' AND t.lease_owner = :owner
    RETURNING t.id, t.attempt
), a AS (
    UPDATE task_attempts a SET finished_at = now(), outcome = 'released', stage = :stage,
        decision = 'released by a stopping orchestrator; not charged as a retry'
    FROM u WHERE a.task_id = u.id AND a.attempt = u.attempt
)
SELECT count(*) FROM u

-- name: drop_zero_failure_counts
-- Reasons no failed or dead task has any more would pile up with the history (0006).
DELETE FROM task_failure_counts WHERE tasks = 0

-- name: vacuum_queue
VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) task_queue, task_leases, task_counts, task_failure_counts

-- name: submitted_inputs
SELECT DISTINCT input_uri FROM tasks WHERE input_uri = ANY(CAST(:u AS text[]))

-- name: submit_lock
-- Held to commit (the key is newtask.SUBMIT_LOCK_KEY): a concurrent submit of the same stems waits, then sees these rows.
SELECT pg_advisory_xact_lock(:k)

-- name: submit_planner
-- A batch is small against the history it is checked against, and the statistics of a table that
-- grew by millions in this transaction are stale: index probes, not a scan of tasks per batch
-- (hash or merge joins), and no JIT compiling each batch's statements.
SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true),
       set_config('jit', 'off', true)

-- name: batch_table
CREATE TEMPORARY TABLE submit_batch (
    ord bigint NOT NULL, input_uri text NOT NULL, output_uri text NOT NULL, engine text NOT NULL,
    model text NOT NULL, options text NOT NULL, priority int NOT NULL, max_retries int NOT NULL,
    backoff_factor float8 NOT NULL, dedupe_key text NOT NULL
) ON COMMIT DROP

-- name: batch_copy
COPY submit_batch FROM STDIN

-- name: next_batch
TRUNCATE submit_batch

-- name: drop_duplicates
-- A batch's tasks whose dedupe key a row has (written before, or by this submit's earlier batches)
-- are duplicates: out of the staging table, they are neither checked nor inserted.
DELETE FROM submit_batch f USING tasks t WHERE t.dedupe_key = f.dedupe_key

-- name: unfinished_stems
-- A new task on the stem of an unfinished task (another task: the same one was dropped above) would
-- overwrite its outputs; an index probe (ix_tasks_output_uri) per stem.
SELECT f.input_uri AS new_input, f.output_uri, t.id, t.input_uri, t.status::text AS status
FROM submit_batch f JOIN tasks t ON t.output_uri = f.output_uri
WHERE t.status = ANY(CAST(:s AS task_status[]))
ORDER BY f.ord, t.id LIMIT 1

-- name: submit_insert
-- Ids come from the sequence in the order rows are inserted, which is the batch's order. No ON
-- CONFLICT: the batch holds each key once and none a row has (dropped above, this transaction's own
-- rows included), and the submit lock keeps other submits out until commit (speculative insertion
-- cost a tenth of the insert); a row written around the store would fail the submit, writing nothing.
INSERT INTO tasks (input_uri, output_uri, engine, model, options, priority, max_retries, backoff_factor, dedupe_key)
SELECT input_uri, output_uri, engine, model, CAST(options AS jsonb), priority, max_retries, backoff_factor, dedupe_key
FROM submit_batch ORDER BY ord
RETURNING id, dedupe_key
