"""Dagster definitions for the dspark platform (loaded through workspace.yaml)."""
