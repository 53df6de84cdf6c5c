"""The model library: one module per model, each with the model's own fast inference.

* :mod:`bayeslr.models.krosbl` — Kronecker-structured sparse Bayesian learning (KroSBL): EM with
  an exact factored E-step for :math:`y = (A_1 \\otimes \\cdots \\otimes A_I) x + n` with a
  Kronecker-structured sparsity prior; use it for sparse recovery with separable dictionaries
  (multidimensional compressed sensing, MIMO/IRS channel estimation).
"""

from bayeslr.models.krosbl import KroneckerSBL, KroSBLResult, krosbl_em, krosbl_estep, krosbl_sample

__all__ = ["KroneckerSBL", "KroSBLResult", "krosbl_em", "krosbl_estep", "krosbl_sample"]
