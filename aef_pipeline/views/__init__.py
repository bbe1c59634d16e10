"""Seeing and comparing fields: quicklooks, similarity to reference vectors, change between periods.

Importing this package registers the `ds.aef` accessor on xarray Datasets (views/accessor.py).
"""

from aef_pipeline.views import accessor as accessor
