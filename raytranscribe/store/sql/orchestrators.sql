-- The orchestrator registry: what each running orchestrator publishes for `raytranscribe status`.

-- name: publish
INSERT INTO orchestrators (owner, state, expires_at)
VALUES (:owner, CAST(:state AS jsonb), now() + make_interval(secs => :ttl))
ON CONFLICT (owner) DO UPDATE SET state = EXCLUDED.state, heartbeat_at = now(), expires_at = EXCLUDED.expires_at

-- name: retire
DELETE FROM orchestrators WHERE owner = :owner OR expires_at < now() - interval '1 hour'

-- name: running
SELECT owner, state, started_at, heartbeat_at FROM orchestrators WHERE expires_at >= now() ORDER BY started_at
