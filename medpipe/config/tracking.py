"""The ``tracking`` section: MLflow settings."""

from __future__ import annotations

from typing import Dict, Optional

from pydantic import Field

from medpipe.config.base import StrictModel

__all__ = ["TrackingConfig"]


class TrackingConfig(StrictModel):
    """MLflow tracking. The default backend store is a local sqlite file (``sqlite:///mlflow.db``)."""

    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: Optional[str] = Field(None, description="default: the pipeline name")
    run_name: Optional[str] = None
    tags: Dict[str, str] = {}
    log_model: bool = Field(True, description="log the best network with mlflow.pytorch.log_model")
    artifact_location: Optional[str] = Field(None, description="artifact root of a new experiment (MLflow default)")
