"""The model library: one package per model, all on one contract (:mod:`bayeslr.models.base`).

Every model is a plain NumPyro function (``funbat_model``, ``gphm_model``, ``krosbl_model``,
``bnn_model``, ``multvae_model``), a pure ``init``/``step`` algorithm run by the one training loop
:func:`bayeslr.infer.loop.run`, and an :class:`~bayeslr.models.base.Estimator` whose ``fit(data)``
returns a :class:`~bayeslr.models.base.ModelPosterior` of that function: ``predict`` draws the
observed sites, ``log_likelihood``/``to_arviz`` are of the training data, ``score`` is the
held-out log predictive density. Each package has ``algo`` (the pure algorithm), ``model`` and
``estimator`` modules.

* :mod:`bayeslr.models.funbat` — functional Bayesian Tucker decomposition (FunBaT, FunBaT-CP) of
  continuous-indexed tensors (values at real coordinates such as latitude × longitude × time):
  latent functions with state-space GP priors, fitted by message passing with a Kalman smoother
  per mode, linear in the entries; predicts at unseen coordinates with a predictive variance.

* :mod:`bayeslr.models.gphm` — GP-HM, a Gaussian-process PDE solver for high-frequency and
  multi-scale solutions: spectral-mixture (Student-t or Gaussian) product kernels on a
  collocation grid, so every covariance and derivative operator is a Kronecker product;
  :class:`GPSolver` takes a :class:`PDE` (any operator of u and its derivatives, linear or not)
  or one of the paper's eleven problems (``GPSolver().fit(pde)``) and returns the posterior of
  :func:`gphm_model`, whose ``solution`` is the posterior mean anywhere in the box.

* :mod:`bayeslr.models.krosbl` — Kronecker-structured sparse Bayesian learning (KroSBL): EM with
  an exact factored E-step for :math:`y = (A_1 \\otimes \\cdots \\otimes A_I) x + n` with a
  Kronecker-structured sparsity prior; use it for sparse recovery with separable dictionaries
  (multidimensional compressed sensing, MIMO/IRS channel estimation). ``coupling=`` gives the
  pattern-coupled variant (PC-KroSBL) for clustered supports; :func:`krosbl_model` is the same
  prior as a NumPyro model for NUTS/SVI through :func:`bayeslr.infer.fit`.

* :mod:`bayeslr.models.ssvi` — SSVI, Bayesian neural networks (MLP, small CNN) whose mean-field
  Gaussian posterior lives on a fixed-size sparse support that is updated during training
  (removal by the SNR of :math:`|\theta|`, addition by the dense gradient): :class:`SSVI`
  trains at a target density (1.0 is dense mean-field VI); :func:`bnn_model` is the same network
  as a NumPyro model.

* :mod:`bayeslr.models.multvae` — Mult-VAE and Mult-DAE for collaborative filtering on implicit
  feedback: an amortized VAE with a multinomial likelihood trained by the annealed β-ELBO of
  :mod:`bayeslr.infer` on scipy.sparse click matrices, data-parallel over devices with
  ``jax.sharding``, with checkpoint/resume; :class:`EASE` and popularity as baselines.
"""

from bayeslr.models.funbat import FunBaT, FunBaTPosterior, funbat_model
from bayeslr.models.gphm import PDE, GPHMPosterior, GPSolver, gphm_model
from bayeslr.models.krosbl import (
    KroneckerSBL,
    KroSBLResult,
    coupling_matrix,
    krosbl_em,
    krosbl_estep,
    krosbl_model,
    krosbl_sample,
    nnls,
)
from bayeslr.models.multvae import EASE, MultVAE, MultVAEPosterior, multvae_guide, multvae_model
from bayeslr.models.ssvi import SSVI, SSVIPosterior, bnn_model

__all__ = [
    "FunBaT",
    "FunBaTPosterior",
    "GPHMPosterior",
    "GPSolver",
    "gphm_model",
    "KroneckerSBL",
    "KroSBLResult",
    "coupling_matrix",
    "funbat_model",
    "krosbl_em",
    "krosbl_estep",
    "krosbl_model",
    "krosbl_sample",
    "nnls",
    "PDE",
    "EASE",
    "MultVAE",
    "MultVAEPosterior",
    "multvae_guide",
    "multvae_model",
    "SSVI",
    "SSVIPosterior",
    "bnn_model",
]
