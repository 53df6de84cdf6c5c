r"""SSVI: Bayesian neural networks trained by sparse subspace variational inference.

Li, Miao, Qiu and Zhang, "Training Bayesian Neural Networks with Sparse Subspace Variational
Inference", ICLR 2024 (arXiv 2402.11025).

**Model.** An MLP (optionally preceded by small convolutional layers) with weights
:math:`\theta \in \mathbb R^d`, prior :math:`\theta_i \sim \mathcal N(0, \sigma_p^2)` and a
categorical (classification) or Gaussian (regression) likelihood. Biases (and the regression
noise scale) are point estimates.

**Variational family.** A support :math:`\gamma \subset \{1..d\}` of fixed size
:math:`|\gamma| = s` per layer, and

.. math::

    q_{\phi,\gamma}(\theta) = \prod_{i\in\gamma} \mathcal N(\theta_i;\mu_i,\sigma_i^2)
    \prod_{i\notin\gamma} \delta_0(\theta_i),\qquad \sigma_i = \operatorname{softplus}(\rho_i).

Inactive weights are exactly zero, in training and in every posterior draw. The objective is the
β-weighted ELBO on the active coordinates,

.. math::

    \mathcal L(\phi,\gamma) = \tfrac1N\,\mathbb E_q[-\log p(\mathcal D\mid\theta)]
    + \tfrac{\beta_t}{N} \sum_{i\in\gamma}\Big[\log\tfrac{\sigma_p}{\sigma_i}
    + \tfrac{\sigma_i^2+\mu_i^2}{2\sigma_p^2} - \tfrac12\Big],

with :math:`\beta_t` a linear warm-up to ``kl_weight`` (:func:`bayeslr.infer.linear_warmup`) and
the expectation estimated with the local reparameterization trick (one noise draw per
activation: mean :math:`x\mu`, variance :math:`x^2\sigma^2`).

**Alternating optimization.** Every step is an optax step on :math:`(\mu,\rho)` (gradients and
optimizer moments masked, so inactive weights stay zero). Every :math:`\Delta T` steps, while
:math:`t < T_{end} = 0.75\,T`, the support is updated instead, per sparse layer:

1. *removal*: keep the :math:`s - n_t` active weights with the highest score,
   :math:`n_t = \lfloor \alpha_t s\rfloor`, :math:`\alpha_t = \tfrac\alpha2(1+\cos(\pi t/T_{end}))`;
   scores (``criterion``) of the folded normal :math:`|\theta|`: ``"snr_abs"`` (default,
   :math:`\mathbb E|\theta|/\operatorname{sd}|\theta|`), ``"mean_abs"`` (:math:`\mathbb
   E|\theta| = \sigma\sqrt{2/\pi}\,e^{-\mu^2/2\sigma^2}
   + \mu\,\operatorname{erf}(\mu/\sqrt2\sigma)`),
   ``"snr"`` (:math:`|\mu|/\sigma`), ``"abs_mean"`` (:math:`|\mu|`);
2. *addition*: among the weights not kept (just-removed ones included), add the :math:`n_t` with
   the largest :math:`|\partial\mathcal L/\partial\mu|` of the *dense* gradient (taken with respect
   to the effective weight :math:`\mu\odot m`, so it exists off the support). New weights start at
   :math:`\mu = 0` and :math:`\rho` = the layer's mean active :math:`\rho`; a weight removed and
   re-added keeps its values. Removal and addition use ranks, not ``top_k``, so :math:`n_t` can be
   traced and every shape is static under ``jit``.

``density=1.0`` is dense mean-field VI (no support updates); ``mask_update="static"`` keeps the
initial random support (the random-mask baseline); :meth:`SSVIPosterior.prune` prunes a trained
posterior (dense VI pruned after training).

**Posterior.** :class:`SSVI` returns an :class:`SSVIPosterior` of :func:`bnn_model`: draws of
the active weights ``w_<l>``, with the point-estimated biases (and the regression noise) as the
model's fixed arguments; ``predict`` draws labels or targets through the model,
``predict_summary`` averages probabilities.

**Layout.** ``algo.py``: the network, the scores, the support update, the objective and the
training step for :func:`bayeslr.infer.loop.run`; ``model.py``: :func:`bnn_model`;
``estimator.py``: :class:`SSVI`, :class:`SSVIPosterior`.

**Cost.** A step costs about three sparse forward passes (:math:`3 f_S`); a support update adds
one dense backward pass (:math:`2 f_S + f_D`). Training FLOPs are reported analytically
(:func:`training_flops`); the arrays themselves are dense with a mask, so the *measured* time on
CPU does not fall with the density.
"""

from bayeslr.models.ssvi.algo import (
    CRITERIA,
    Layer,
    SSVIProblem,
    SSVIState,
    build_layers,
    gaussian_kl,
    network_forward,
    removal_scores,
    ssvi_init,
    ssvi_objective,
    ssvi_step,
    support_update,
    training_flops,
)
from bayeslr.models.ssvi.estimator import SSVI, SSVIPosterior
from bayeslr.models.ssvi.model import bnn_model

__all__ = [
    "CRITERIA",
    "Layer",
    "SSVI",
    "SSVIPosterior",
    "SSVIProblem",
    "SSVIState",
    "bnn_model",
    "build_layers",
    "gaussian_kl",
    "network_forward",
    "removal_scores",
    "ssvi_init",
    "ssvi_objective",
    "ssvi_step",
    "support_update",
    "training_flops",
]
