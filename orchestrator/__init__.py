"""Rolling-upgrade orchestrator for OpenStack-shaped clouds."""
