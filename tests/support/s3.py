"""S3 fixtures (filled in by the transfer work)."""
