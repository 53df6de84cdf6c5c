r"""Mult-VAE and Mult-DAE: variational and denoising autoencoders for collaborative filtering.

Liang, Krishnan, Hoffman and Jebara, "Variational Autoencoders for Collaborative Filtering",
WWW 2018 (arXiv 1802.05814).

**Model.** User :math:`u` has a binary click vector :math:`x_u \in \{0,1\}^I` with
:math:`N_u = \sum_i x_{ui}` clicks;

.. math::

    z_u \sim \mathcal N(0, I_K),\qquad \pi(z_u) = \operatorname{softmax}(f_\theta(z_u)),\qquad
    x_u \sim \operatorname{Mult}(N_u, \pi(z_u)),

with the decoder :math:`f_\theta` an MLP ([K-600-I] by default, tanh between layers). The
amortized guide is :math:`q_\phi(z_u\mid x_u) = \mathcal N(\mu_\phi(\tilde x_u),
\operatorname{diag}\sigma^2_\phi(\tilde x_u))`, where :math:`\tilde x_u` is :math:`x_u`
normalized to unit :math:`\ell_2` norm and, in training, passed through dropout (keep 0.5). The
encoder is [I-600-2K]. Training maximizes the β-ELBO

.. math::

    \mathcal L_\beta(u) = \mathbb E_q[\log p_\theta(x_u\mid z_u)]
    - \beta\,\mathrm{KL}(q_\phi(z_u\mid x_u)\,\|\,p(z_u)),

with :math:`\beta_t = \min(\text{cap}, t/T_a)` annealed over updates
(:class:`bayeslr.infer.BetaELBO` with :func:`bayeslr.infer.linear_warmup`, through
:class:`bayeslr.infer.ObjectiveSVI`; the KL is the objective's one-sample estimate). Adam
(1e-3), minibatches of 500 users. Scores for a user are :math:`f_\theta(\mu_\phi(\tilde x_u))`
(no sampling, no dropout).

**Mult-DAE** (``kind="dae"``) is the same code without the latent variable: :math:`\pi =
\operatorname{softmax}(f_\theta(g_\phi(\operatorname{dropout}(\tilde x_u))))`, [I-200-I], loss
:math:`-\log p(x_u) + \lambda\sum\|W\|^2` with :math:`\lambda = 0.01/B`.

**Protocol.** Strong generalization (:func:`bayeslr.datasets.strong_generalization_split`):
the model is trained on training users; held-out users are folded in (their 80 % input clicks
are encoded), the other 20 % are ranked among all items, with the fold-in items excluded. The
checkpoint kept is the epoch with the best validation NDCG@100.

**Scale-out.** ``devices=`` trains data-parallel over JAX devices with ``jax.sharding``: each
minibatch is sharded along users, parameters and optimizer state are replicated, and the
jitted SVI step runs as one SPMD program (gradients are all-reduced by XLA). Inputs are
``scipy.sparse`` CSR matrices; each minibatch is densified inside the compiled step from the
CSR arrays (no host round trip per batch).

**Checkpoints.** ``fit(..., checkpoint=path)`` writes the whole training state (SVI state with
parameters, optimizer moments and the annealing step, the RNG key, the step, the best parameters
so far and the histories) atomically after every epoch (:func:`bayeslr.infer.loop.run`); a later
``fit`` with the same path resumes where it stopped and ends where an uninterrupted run would.

**Posterior.** :class:`MultVAEPosterior` is bound to :func:`multvae_model`: the users' latent
:math:`z_u` drawn from the amortized guide, the networks as fixed arguments; ``predict``
draws click vectors, ``score(fold_in, heldout)`` is the held-out log-likelihood (the
protocol's), ``scores`` and ``recommend`` rank items. Mult-DAE's posterior is a point estimate
bound to :func:`multdae_model`, with no random variable.

**Layout.** ``algo.py``: networks, CSR minibatches densified inside the compiled step, the SVI
step for :func:`bayeslr.infer.loop.run`; ``model.py``: the model functions and the guide;
``estimator.py``: :class:`MultVAE`, :class:`MultVAEPosterior`, :class:`EASE`, popularity.
"""

from bayeslr.models.multvae.algo import (
    MultVAEProblem,
    MultVAEState,
    anneal_steps_for,
    densify_rows,
    multinomial_log_likelihood,
    multvae_init,
    multvae_step,
    multvae_svi,
    networks,
)
from bayeslr.models.multvae.estimator import EASE, MultVAE, MultVAEPosterior, popularity_scores
from bayeslr.models.multvae.model import multdae_model, multvae_guide, multvae_model

__all__ = [
    "EASE",
    "MultVAE",
    "MultVAEPosterior",
    "MultVAEProblem",
    "MultVAEState",
    "anneal_steps_for",
    "densify_rows",
    "multdae_model",
    "multinomial_log_likelihood",
    "multvae_guide",
    "multvae_init",
    "multvae_model",
    "multvae_step",
    "multvae_svi",
    "networks",
    "popularity_scores",
]
