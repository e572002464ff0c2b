"""Orchestration primitives: each works on its own around any sync or async callable."""
