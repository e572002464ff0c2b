"""Persistence backends for checkpoints, sessions and event logs."""
