"""MLflow helpers of medpipe.tracking that touch process-wide MLflow state."""

import mlflow

from medpipe.tracking import _mlflow_uris


def test_model_loading_uris_are_restored_and_the_registry_keeps_following_tracking(tmp_path):
    before = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/a.db")
        with _mlflow_uris(f"sqlite:///{tmp_path}/b.db"):
            assert mlflow.get_tracking_uri().endswith("b.db") and mlflow.get_registry_uri().endswith("b.db")
        assert mlflow.get_tracking_uri().endswith("a.db")
        # an unset registry URI follows the tracking URI; restoring must not pin it to a.db
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/c.db")
        assert mlflow.get_registry_uri().endswith("c.db")
    finally:
        mlflow.set_tracking_uri(before)
