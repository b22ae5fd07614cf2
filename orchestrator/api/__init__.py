"""The daemon's HTTP API: aiohttp app (`orchestrator.api.app.make_app`),
handlers, SSE, metrics, and the OpenAPI document.

Nothing is imported here, so the CLI can read the request model and the
document without loading the server side."""
