"""`ray job submit --working-dir . -- python jobs/backfill.py s3://bucket/prefix/ --output s3://bucket/out/`

Submits every audio object under the prefix (skipping what is already submitted; `--skip-invalid`
leaves out keys that cannot be transcribed safely, naming each), runs the orchestrator until
drained, logging a progress line every `progress_interval_s` (the job's log is no terminal), prints
the summary, and exits non-zero when any task ended dead, so `ray job status` tells the truth. It
calls the same function as `raytranscribe backfill`.
"""

from raytranscribe.cli import app

if __name__ == "__main__":
    import sys

    app(["backfill", *sys.argv[1:]])
