-- What happens to a claimed task: its outcome recorded (fenced by attempt), an expired lease reaped,
-- an operator's cancel or requeue.

-- name: complete
-- PREPAREd (see connection.Prepared). Every outcome of the batch is a completion: no retry decision
-- needs the row, so the fenced UPDATE (status = 'in_progress' AND attempt = v.attempt, re-checked on
-- the locked row) is the whole transaction: one statement, no lock-then-write round trip. Rows come
-- sorted by id (lock order).
WITH u AS (
    UPDATE tasks t SET
        status = 'completed', lease_owner = NULL, lease_expires_at = NULL, retry_at = NULL, completed_at = now(),
        updated_at = now(),
        audio_duration_s = COALESCE(v.audio_duration_s, t.audio_duration_s),
        language = COALESCE(v.language, t.language),
        output_uris = COALESCE(CAST(v.output_uris AS jsonb), t.output_uris),
        text_preview = COALESCE(v.text_preview, t.text_preview),
        -- This attempt's verdict (a completion is the only writer of both; a requeue clears them).
        quality = CAST(v.quality AS jsonb), suspect = v.suspect
    FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         AS v(id, attempt, audio_duration_s, language, output_uris, text_preview, actor, node, timings, quality, suspect)
    WHERE t.id = v.id AND t.status = 'in_progress' AND t.attempt = v.attempt
    -- The attempt row's fields ride along, so closing it needs no second pass over the arrays.
    RETURNING t.id, t.attempt, v.actor, v.node, v.timings, v.quality
), a AS (
    UPDATE task_attempts a SET
        finished_at = now(), outcome = 'completed', stage = NULL, error_class = NULL, error_message = NULL,
        http_status = NULL, actor = COALESCE(u.actor, a.actor), node = COALESCE(u.node, a.node), decision = NULL,
        timings = CAST(u.timings AS jsonb), quality = CAST(u.quality AS jsonb)
    FROM u WHERE a.task_id = u.id AND a.attempt = u.attempt
)
SELECT id FROM u

-- name: fenced
SELECT id, status::text AS status, attempt FROM tasks WHERE id = ANY(CAST(:ids AS bigint[]))

-- name: lock_for_record
-- In id order, so two recorders never deadlock on each other.
SELECT id, status::text AS status, attempt, retries, max_retries, backoff_factor, crashes, releases
FROM tasks WHERE id = ANY(CAST(:ids AS bigint[])) ORDER BY id FOR UPDATE

-- name: lock_expired
SELECT t.id, t.status::text AS status, t.attempt, t.retries, t.max_retries, t.backoff_factor, t.crashes,
       t.releases
FROM task_leases l JOIN tasks t ON t.id = l.task_id
WHERE l.expires_at < now() AND t.status = 'in_progress' AND t.lease_expires_at < now()
ORDER BY l.expires_at, t.id LIMIT :limit FOR UPDATE OF t SKIP LOCKED

-- name: apply
-- Tasks and their attempt rows in one statement (one round trip); fencing was checked on the locked rows.
WITH v AS (
    SELECT * FROM unnest(
        CAST(:ids AS bigint[]), CAST(:attempts AS int[]), CAST(:statuses AS text[]), CAST(:retries AS int[]),
        CAST(:delays AS float8[]), CAST(:reasons AS text[]), CAST(:errors AS text[]), CAST(:durations AS float8[]),
        CAST(:languages AS text[]), CAST(:outputs AS text[]), CAST(:previews AS text[]), CAST(:outcomes AS text[]),
        CAST(:stages AS text[]), CAST(:classes AS text[]), CAST(:messages AS text[]), CAST(:https AS int[]),
        CAST(:actors AS text[]), CAST(:nodes AS text[]), CAST(:decisions AS text[]), CAST(:timings AS text[]),
        CAST(:crashes AS int[]), CAST(:releases AS int[]), CAST(:qualities AS text[]), CAST(:suspects AS bool[]))
    AS v(id, attempt, status, retries, delay_s, failure_reason, last_error, audio_duration_s, language, output_uris,
         text_preview, outcome, stage, error_class, error_message, http_status, actor, node, decision, timings,
         crashes, releases, quality, suspect)
), u AS (
    UPDATE tasks t SET
        status = CAST(v.status AS task_status),
        updated_at = now(),
        retries = v.retries,
        crashes = v.crashes,
        releases = v.releases,
        retry_at = CASE WHEN v.status = 'failed' THEN now() + make_interval(secs => v.delay_s) END,
        lease_owner = NULL,
        lease_expires_at = NULL,
        failure_reason = COALESCE(v.failure_reason, t.failure_reason),
        last_error = COALESCE(v.last_error, t.last_error),
        completed_at = CASE WHEN v.status IN ('completed', 'dead') THEN now() END,
        audio_duration_s = COALESCE(v.audio_duration_s, t.audio_duration_s),
        language = COALESCE(v.language, t.language),
        output_uris = COALESCE(CAST(v.output_uris AS jsonb), t.output_uris),
        text_preview = COALESCE(v.text_preview, t.text_preview),
        quality = CASE WHEN v.status = 'completed' THEN CAST(v.quality AS jsonb) ELSE t.quality END,
        suspect = CASE WHEN v.status = 'completed' THEN v.suspect ELSE t.suspect END
    FROM v WHERE t.id = v.id
    RETURNING t.id, t.retry_at
), a AS (
    UPDATE task_attempts a SET
        finished_at = now(), outcome = v.outcome, stage = v.stage, error_class = v.error_class,
        error_message = v.error_message, http_status = v.http_status, actor = COALESCE(v.actor, a.actor),
        node = COALESCE(v.node, a.node), decision = v.decision, timings = CAST(v.timings AS jsonb),
        quality = CAST(v.quality AS jsonb)
    FROM v WHERE a.task_id = v.id AND a.attempt = v.attempt
)
SELECT id, retry_at FROM u

-- name: lock_queued
-- Writers of queued tasks (cancel, requeue) lock the tasks' queue rows first, in id order: claim
-- holds a queue row while it updates the task, and the side-table trigger of a writer holding the
-- task would then wait for that queue row. Same order everywhere, no deadlock. The where placeholder
-- names the tasks (alias t): the where fragments below, joined with AND.
SELECT q.task_id FROM task_queue q JOIN tasks t ON t.id = q.task_id WHERE {where}
ORDER BY q.task_id FOR UPDATE OF q

-- name: where_requeueable
t.status = ANY(CAST(:requeueable AS task_status[]))

-- name: where_ids
t.id = ANY(CAST(:ids AS bigint[]))

-- name: where_status
t.status = CAST(:status AS task_status)

-- name: requeue
UPDATE tasks t SET status = 'pending', retries = 0, retry_at = NULL, completed_at = NULL,
    lease_owner = NULL, lease_expires_at = NULL
WHERE {where} RETURNING t.id

-- name: requeue_suspects
-- Completed tasks whose transcript is suspect (their side rows, migration 0010) go back to pending,
-- with another model when :model is not NULL; the transition guard allows completed -> pending for
-- a suspect task only. The verdict is cleared (each attempt row keeps its own); the dedupe key stays
-- the submission's. No queue rows to lock first: completed tasks have none.
UPDATE tasks t SET status = 'pending', retries = 0, retry_at = NULL, completed_at = NULL,
    lease_owner = NULL, lease_expires_at = NULL, quality = NULL, suspect = NULL,
    model = COALESCE(CAST(:model AS text), t.model)
WHERE t.id = ANY(ARRAY(SELECT task_id FROM task_suspects)) AND t.status = 'completed' AND t.suspect
RETURNING t.id

-- name: cancel
WITH old AS (
    SELECT id, attempt, status FROM tasks
    WHERE id = ANY(CAST(:ids AS bigint[])) AND status = ANY(CAST(:cancellable AS task_status[]))
    ORDER BY id FOR UPDATE
), u AS (
    UPDATE tasks t SET status = 'cancelled', lease_owner = NULL, lease_expires_at = NULL, retry_at = NULL,
        completed_at = now()
    FROM old WHERE t.id = old.id
    RETURNING t.id
), a AS (
    UPDATE task_attempts a SET finished_at = now(), outcome = 'cancelled', decision = 'cancelled by the user'
    FROM old WHERE a.task_id = old.id AND a.attempt = old.attempt AND old.status = 'in_progress'
        AND a.finished_at IS NULL
)
SELECT id FROM u ORDER BY id

-- name: status_of
-- The named tasks a requeue or cancel left alone, and the status that did not allow it.
SELECT id, status::text AS status FROM tasks WHERE id = ANY(CAST(:ids AS bigint[]))
