"""DirectPred on the digits: BYOL with a linear predictor set in closed form, never trained.

Tian, Chen & Ganguli, "Understanding Self-supervised Learning Dynamics without Contrastive Pairs", ICML 2021.
The predictor is W = U diag(p) U^T from the eigen-decomposition of the EMA correlation of the online
projections, p_j = sqrt(lambda_j / max lambda) + eps (rho = 0.3 as in the authors' example run; eps = 0.1).
"""

from configs import byol_digits


def get_config(arg: str | None = None):
    c = byol_digits.get_config(arg)
    c.model.predictor_hidden = ()
    c.method.directpred.enabled = True
    c.num_steps = 600  # the closed-form predictor learns faster than BYOL's MLP one
    return c
