"""What every request passes: request ids, the access log, metrics (pure ASGI), logging setup
and the operator's /metrics endpoint."""
