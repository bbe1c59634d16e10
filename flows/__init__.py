"""Batch jobs that wire aef_pipeline across an existing dask cluster; no logic of their own."""
