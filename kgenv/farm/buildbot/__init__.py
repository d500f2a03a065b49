"""Buildbot as a farm engine: the master configuration kgenv writes, and the HTTP API client."""
