"""Task workflows: the run skeleton (:mod:`~medpipe.workflow.skeleton`), one object per task
(:mod:`~medpipe.workflow.segmentation`, :mod:`~medpipe.workflow.classification`, :mod:`~medpipe.workflow.slides`),
cross-validation (:mod:`~medpipe.workflow.cv`), resuming (:mod:`~medpipe.workflow.resume`) and re-evaluating a
trained run (:mod:`~medpipe.workflow.evaluate`).

``run_pipeline(cfg)`` is the library entry point; ``python -m medpipe.run`` is its command line.
"""

from medpipe.workflow.pipeline import is_cross_validation, run_pipeline
from medpipe.workflow.result import RunResult
from medpipe.workflow.resume import ResumeFrom, find_resume

__all__ = ["run_pipeline", "is_cross_validation", "RunResult", "ResumeFrom", "find_resume"]
