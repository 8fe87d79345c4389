-- Reads. Those that do not grow with the table (migration 0006): the counts are sums over a few
-- hundred shard rows kept by the triggers, the oldest pending task is the first entry of a partial
-- index of task_queue, and the reasons are counted per reason, not per task.

-- name: task
SELECT id, input_uri, output_uri, engine, model, options, priority, status, attempt, retries, max_retries,
       backoff_factor, retry_at, crashes, releases, lease_owner, lease_expires_at, failure_reason, last_error,
       created_at, updated_at, started_at, completed_at, audio_duration_s, language, output_uris, text_preview,
       quality, suspect
FROM tasks WHERE id = :id

-- name: attempts
SELECT attempt, worker, actor, node, started_at, finished_at, outcome, stage, error_class, error_message,
       http_status, decision, timings, quality
FROM task_attempts WHERE task_id = :id ORDER BY attempt

-- name: list_tasks
-- The where placeholder is empty, or list_where_status, or that and list_where_ids, or list_where_suspect.
SELECT id, input_uri, output_uri, engine, model, options, priority, status, attempt, retries, max_retries,
       backoff_factor, retry_at, crashes, releases, lease_owner, lease_expires_at, failure_reason, last_error,
       created_at, updated_at, started_at, completed_at, audio_duration_s, language, output_uris, text_preview,
       quality, suspect
FROM tasks {where} ORDER BY id LIMIT :limit

-- name: list_where_status
WHERE status = CAST(:status AS task_status)

-- name: list_where_ids
-- The side rows name the tasks; tasks is read by primary key only. The ids placeholder is one of the
-- ids_* statements below.
AND id = ANY(ARRAY({ids}))

-- Where list_tasks finds the ids of a status without scanning tasks: the side row of each task not
-- completed (ids_<status>). Completed tasks are most of a long-lived table, so an id-ordered walk of
-- it finds them.

-- name: ids_pending
SELECT task_id FROM task_queue WHERE status = 'pending' ORDER BY task_id LIMIT :limit

-- name: ids_failed
SELECT task_id FROM task_queue WHERE status = 'failed' ORDER BY task_id LIMIT :limit

-- name: ids_in_progress
SELECT task_id FROM task_leases ORDER BY task_id LIMIT :limit

-- name: ids_dead
SELECT task_id FROM task_stopped WHERE status = 'dead' ORDER BY task_id LIMIT :limit

-- name: ids_cancelled
SELECT task_id FROM task_stopped WHERE status = 'cancelled' ORDER BY task_id LIMIT :limit

-- name: list_where_suspect
-- Completed tasks with a suspect transcript: their side rows (migration 0010) name them.
WHERE id = ANY(ARRAY(SELECT task_id FROM task_suspects ORDER BY task_id LIMIT :limit))
    AND status = 'completed' AND suspect

-- name: suspects
-- A side table of the suspects alone (migration 0010): counted without reading tasks.
SELECT count(*) FROM task_suspects

-- name: counts
SELECT CAST(status AS text) AS status, CAST(sum(tasks) AS bigint) AS n, sum(audio_s) AS audio_s
FROM task_counts GROUP BY status

-- name: oldest_pending
SELECT EXTRACT(EPOCH FROM now() - min(created_at)) FROM task_queue WHERE status = 'pending'

-- name: top_reasons
SELECT failure_reason, CAST(sum(tasks) AS bigint) AS n FROM task_failure_counts
GROUP BY failure_reason HAVING sum(tasks) > 0 ORDER BY n DESC, failure_reason LIMIT :k

-- name: claimable_pairs
-- Pending or in progress: the counts. Failed and due: the failed rows of task_queue whose
-- ready_at has come (a partial index; waiting retries are not work now). Neither scans tasks.
SELECT engine, model FROM task_counts WHERE status IN ('pending', 'in_progress')
GROUP BY engine, model HAVING sum(tasks) > 0
UNION SELECT engine, model FROM task_queue WHERE status = 'failed' AND ready_at <= now()
ORDER BY engine, model

-- name: outstanding
-- The counts per (engine, model, status) of migration 0006: a few rows, however long the queue. The
-- pairs placeholder is empty, or outstanding_pairs_filter.
SELECT CAST(COALESCE(sum(tasks), 0) AS bigint) FROM task_counts
WHERE status = ANY(CAST(:s AS task_status[])) {pairs}

-- name: outstanding_pairs_filter
AND (engine, model) IN (SELECT * FROM unnest(CAST(:e AS text[]), CAST(:m AS text[])))

-- name: count_by_status
SELECT status, count(*) AS n FROM tasks WHERE id = ANY(CAST(:ids AS bigint[])) GROUP BY status

-- name: export_page
-- One page of `raytranscribe export`'s keyset walk: the tasks after :after, in the primary key's order,
-- of the statuses asked for. A page is a range scan of the primary key from where the last one ended,
-- however deep into the table it is (an OFFSET would rescan every page before it). options and quality
-- come as JSON text, so the export writes them as stored without parsing them. The suspect
-- placeholder is empty or export_where_suspect.
SELECT id, status, input_uri, output_uri, output_uris, engine, model, CAST(options AS text) AS options, language,
       audio_duration_s, text_preview, CAST(quality AS text) AS quality, suspect, attempt, retries,
       failure_reason, created_at, completed_at
FROM tasks WHERE id > :after AND status = ANY(CAST(:statuses AS task_status[])) {suspect}
ORDER BY id LIMIT :limit

-- name: export_where_suspect
AND suspect = :suspect
