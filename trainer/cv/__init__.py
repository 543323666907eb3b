"""Speaker k-fold cross-validation (DESIGN.md section 8): the plan (``plan``), the folds
(``folds``), running the tasks (``run``), the aggregate (``report``) and the verb (``cli``).

    >>> from trainer.cv import aggregate
    >>> aggregate("runs/cv")["summary"]["macro_f1"]
    {'mean': 0.93, 'std': 0.021}
"""

from trainer.cv.report import aggregate

__all__ = ["aggregate"]
