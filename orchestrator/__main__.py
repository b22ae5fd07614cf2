from orchestrator.cli import entrypoint

entrypoint()
