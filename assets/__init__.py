"""Thin Dagster assets, one module per stage; each body calls dspark_core."""
