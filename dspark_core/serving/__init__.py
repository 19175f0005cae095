"""Serving targets and their drafts with an existing engine (vLLM)."""
