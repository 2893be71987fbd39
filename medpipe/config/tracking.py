"""The ``tracking`` section: MLflow settings."""

from __future__ import annotations

from typing import Dict, Optional

from pydantic import Field, model_validator

from medpipe.config.base import StrictModel

__all__ = ["TrackingConfig"]


class TrackingConfig(StrictModel):
    """MLflow tracking. The default backend store is a local sqlite file (``sqlite:///mlflow.db``)."""

    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: Optional[str] = Field(None, description="default: the pipeline name")
    run_name: Optional[str] = None
    tags: Dict[str, str] = {}
    log_model: bool = Field(True, description="log the best network with mlflow.pytorch.log_model (with a signature, "
                                          "an input example and a tensors-only state_dict.pt)")
    artifact_location: Optional[str] = Field(None, description="artifact root of a new experiment (MLflow default)")
    register_model: Optional[str] = Field(None, description="register the logged best model under this name in "
                                          "the MLflow model registry, with the run's metrics as version tags "
                                          "(needs log_model: true)")

    @model_validator(mode="after")
    def _register_needs_model(self) -> "TrackingConfig":
        """``register_model`` registers the logged model, so it needs ``log_model``."""
        if self.register_model is not None and not self.log_model:
            raise ValueError(f"register_model is {self.register_model!r} but log_model is false: nothing would be "
                             "registered; set log_model: true or remove register_model")
        if self.register_model is not None and not self.register_model.strip():
            raise ValueError("register_model is empty; give the registered model's name or remove it")
        return self
