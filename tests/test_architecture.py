"""The walls of ../shared/ARCHITECTURE.md, checked on the real import graph (each in a fresh interpreter)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raytranscribe"

FORBIDDEN = {
    # module: what importing it must not drag in
    "raytranscribe.worker": ("sqlalchemy", "psycopg2", "boto3", "botocore", "raytranscribe.store", "raytranscribe.storage"),
    "raytranscribe.engines.faster": ("ray", "sqlalchemy", "boto3", "requests"),
    "raytranscribe.engines.openai": ("ray", "sqlalchemy", "boto3", "requests"),
    "raytranscribe.engines.verdict": ("ray", "sqlalchemy", "boto3", "requests"),
    "raytranscribe.audio": ("ray", "sqlalchemy", "boto3", "requests"),
    "raytranscribe.formats": ("ray", "sqlalchemy", "boto3", "requests"),
    "raytranscribe.transfer": ("ray", "sqlalchemy", "boto3", "raytranscribe.store"),
    "raytranscribe.store": ("ray", "boto3", "requests"),
    "raytranscribe.storage": ("ray", "raytranscribe.store", "requests"),
    "raytranscribe.retry": ("ray", "sqlalchemy", "boto3", "requests"),
    "raytranscribe.pool": ("sqlalchemy", "psycopg2", "raytranscribe.store", "boto3", "botocore", "raytranscribe.storage"),
    "raytranscribe.breakers": ("ray", "sqlalchemy", "boto3", "requests"),
    "raytranscribe.orchestrator": ("raytranscribe.engines.faster", "raytranscribe.engines.openai"),
    # the pools' ledger, dispatch, health and failover: Ray and the worker's types, never the database or S3
    **{f"raytranscribe.pool.{m}": ("sqlalchemy", "psycopg2", "raytranscribe.store", "boto3", "botocore",
                                   "raytranscribe.storage") for m in ("ledger", "dispatch", "health", "failover")},
    "raytranscribe.uris": ("ray", "sqlalchemy", "boto3", "botocore", "requests"),
    "raytranscribe.batching": ("ray", "sqlalchemy", "boto3", "botocore", "requests"),
    "raytranscribe.isolation": ("ray", "sqlalchemy", "boto3", "botocore", "requests"),
    # the node's model cache runs in workers and engines: no HTTP client until a download starts
    "raytranscribe.modelcache": ("requests", "boto3", "botocore", "sqlalchemy", "ray", "raytranscribe.store"),
    # `import raytranscribe` stays cheap: the Client loads on first use
    "raytranscribe": ("sqlalchemy", "pydantic", "ray", "boto3", "raytranscribe.client"),
    # the Client reads the store; Ray, S3 and the orchestrator load when it runs or lists, SQLAlchemy when it
    # opens the Store (status, tasks and show read without it: store.reader)
    "raytranscribe.client": ("ray", "boto3", "botocore", "requests", "raytranscribe.orchestrator", "raytranscribe.pool",
                             "raytranscribe.worker", "sqlalchemy", "alembic", "raytranscribe.store.store"),
    "raytranscribe.store.reader": ("sqlalchemy", "alembic", "ray", "numpy", "boto3", "raytranscribe.store.store",
                                   "raytranscribe.store.connection"),
    # the command line formats ages with it: no orchestrator, Ray or numpy on the way
    "raytranscribe.progress": ("ray", "numpy", "sqlalchemy", "raytranscribe.orchestrator", "rich"),
    # the reading commands' tables: plain text, no rich
    "raytranscribe.texttable": ("rich",),
    # the export writes on the driver: pyarrow and boto3 load when a Parquet or s3:// export runs
    "raytranscribe.export": ("ray", "boto3", "botocore", "pyarrow", "raytranscribe.storage"),
    # the command line answers --help at once: each command imports what it uses when it runs
    "raytranscribe.cli": ("sqlalchemy", "pydantic", "pydantic_settings", "rich", "ray", "boto3", "numpy", "av",
                          "raytranscribe.store", "raytranscribe.client"),
}


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_module_stays_inside_its_walls(module):
    code = (
        f"import sys, {module}; "
        f"print(','.join(m for m in {FORBIDDEN[module]!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"


# SQL as it is written here: upper-case keywords in the shapes of a statement (prose says "select").
SQL_TEXT = re.compile(
    r"\bSELECT\b[\s\S]*\bFROM\b|\bSELECT\s+\w+\(|\bINSERT\s+INTO\b|\bUPDATE\s+\w+(\s+\w+)?\s+SET\b"
    r"|\bDELETE\s+FROM\b|\bCREATE\s+(TEMPORARY\s+|UNIQUE\s+|OR\s+REPLACE\s+)?(TABLE|INDEX|DATABASE|TRIGGER|FUNCTION|TYPE)\b"
    r"|\bDROP\s+(TABLE|DATABASE|INDEX|TRIGGER|FUNCTION|TYPE)\b|\bALTER\s+TABLE\b|\bVACUUM\b|\bTRUNCATE\b"
    r"|\bPREPARE\s+\w|\bEXECUTE\s+\w|\bCOPY\s+\w+\s+FROM\b|\bCAST\(\S+ AS \w+"
)
# The schema's history: each migration's DDL stays as it was applied.
SQL_HOMES = (PACKAGE / "store" / "migrations",)


def sql_literals(path: Path) -> list[tuple[int, str]]:
    """The string literals of ``path`` (f-strings with their holes as ``x``; docstrings left out) that hold SQL."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }  # fmt: skip
    # An f-string is read whole, not its pieces one by one.
    parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    skip = docstrings | parts
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
        else:
            continue
        if SQL_TEXT.search(text):
            found.append((node.lineno, text.strip().splitlines()[0][:80]))
    return found


def test_sql_is_written_only_in_store_sql():
    """Every statement is named in store/sql/*.sql; Python modules load and compose them, never spell one."""
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if not any(home in path.parents for home in SQL_HOMES)
        for line, text in sql_literals(path)
    ]
    assert offenders == []
    assert {p.parent for p in PACKAGE.rglob("*.sql")} == {PACKAGE / "store" / "sql"}


def test_the_sql_wall_sees_sql(tmp_path):
    """The check above is not blind: it finds statements in the shapes this project writes them, not prose."""
    seen = [
        'sql = "SELECT id FROM tasks WHERE id = :id"',
        'sql = f"UPDATE tasks t SET status = {s} WHERE t.id = :id"',
        'sql = "DELETE FROM orchestrators WHERE owner = :owner"',
        'sql = "INSERT INTO tasks (input_uri) VALUES (:u)"',
        'call = f"EXECUTE {name} ({args})"',
        'sql = "SELECT pg_advisory_xact_lock(:k)"',
        'sql = "VACUUM (SKIP_LOCKED) task_queue"',
    ]
    prose = ['message = "select an engine from the list"', 'message = "Update the settings and run again"']
    module = tmp_path / "module.py"
    module.write_text('"""SELECT id FROM tasks: a docstring may say so."""\n' + "\n".join(seen + prose) + "\n")
    assert [line for line, _ in sql_literals(module)] == list(range(2, 2 + len(seen)))


# Pure modules inside a package whose __init__ imports more (the pool package imports Ray): each is
# loaded alone, from its file, and must import nothing outside the standard library but these.
PURE = {
    "raytranscribe/pool/policy.py": (),  # the scaling policy: counts and times in, a decision out
}


@pytest.mark.parametrize("path", sorted(PURE))
def test_pure_module_imports_nothing_but_the_standard_library(path):
    code = (
        "import importlib.util, sys; before = set(sys.modules); "
        f"spec = importlib.util.spec_from_file_location('pure_module', {path!r}); "
        "module = importlib.util.module_from_spec(spec); sys.modules['pure_module'] = module; "
        "spec.loader.exec_module(module); "
        "new = {m.split('.')[0] for m in set(sys.modules) - before} - {'pure_module'}; "
        "print(','.join(sorted(m for m in new if m not in sys.stdlib_module_names)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert set(filter(None, out.stdout.strip().split(","))) <= set(PURE[path]), f"{path} imports {out.stdout.strip()}"
