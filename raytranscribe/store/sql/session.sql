-- Statements about a session rather than the data: the hot path's prepared statements
-- (connection.Prepared), and creating and dropping scratch databases (admin.py).

-- name: prepare
PREPARE {name} ({types}) AS {body}

-- name: execute
EXECUTE {name} ({arguments})

-- name: execute_argument
CAST(%s AS {type})

-- name: create_database
CREATE DATABASE "{name}"

-- name: drop_database
DROP DATABASE IF EXISTS "{name}" WITH (FORCE)
