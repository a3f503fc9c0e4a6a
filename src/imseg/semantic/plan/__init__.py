"""Self-configuring training for a time budget (``imseg train --data DATA --time MINUTES``), nnU-Net style.

:func:`make_plan` fingerprints the dataset (:mod:`.fingerprint`), applies the rules (:mod:`.rules`), times a few
real steps of the planned model on this machine (:mod:`.probe`) and splits the budget into epochs (:mod:`.budget`);
:func:`train_planned` trains the plan (and its second stage), then chooses test-time augmentation on the
validation split (:mod:`.tta`) and stores it in the run, where ``imseg.load(run)``, ``imseg val`` and
``imseg predict`` use it by default. Options the user gives win over the plan. :func:`resume_planned`
(``imseg train --resume RUN``) finishes an interrupted planned run from wherever it stopped (:mod:`.resume`).
"""

from .fingerprint import Fingerprint, fingerprint
from .resume import resume_planned
from .rules import Choice, Machine, plan_rules
from .runner import PLANNED_OPTIONS, Plan, make_plan, train_planned

__all__ = ["PLANNED_OPTIONS", "Choice", "Fingerprint", "Machine", "Plan", "fingerprint", "make_plan", "plan_rules",
           "resume_planned", "train_planned"]
