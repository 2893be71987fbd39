"""Fixtures of the serve tests: tiny real models trained with medpipe.run (see models.py)."""

from tests.serve.models import cls_run, mlflow_store, seg_run  # noqa: F401
