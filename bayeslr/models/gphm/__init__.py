r"""GP-HM: a Gaussian-process solver for high-frequency and multi-scale PDEs.

Fang, Cooley, Long, Li, Kirby and Zhe, "Solving High Frequency and Multi-Scale PDEs with
Gaussian Processes", ICLR 2024 (arXiv 2311.04465).

Model
    The solution :math:`u` on a box :math:`\Omega \subset \mathbb R^d` gets a GP prior with a
    product kernel :math:`k(x, x') = \prod_j k_j(x_j, x'_j)`, each factor a spectral mixture
    with :math:`Q` components: Student-t mixture (``"stm"``, Matérn-5/2 × cosine,
    :class:`~bayeslr.gp.StudentTMixture`) or Gaussian mixture (``"gm"``,
    :class:`~bayeslr.gp.SpectralMixture`),

    .. math::
        k_j(\tau) = \sum_q w_{jq}\, \gamma_{jq}(\tau)\cos(2\pi\mu_{jq}\tau).

    The weights are optimized in the log domain (equivalently, a Jeffreys prior
    :math:`p(w) \propto 1/w`), which drives surplus components down and lets the frequencies
    :math:`\mu` settle on the solution's.

    The collocation points form a Cartesian grid :math:`x_1 \times \dots \times x_d`
    (:math:`M = \prod_j M_j` points, endpoints included), so the prior covariance of the grid
    values :math:`U` is :math:`C = \otimes_j K_j`, :math:`K_j = k_j(x_j, x_j) + \epsilon
    k_j(0) I`. Derivatives at the grid come from the GP conditional mean,
    :math:`\partial^{r}_{x_j} u = K_j^{(r,0)}K_j^{-1}` applied along axis :math:`j` (a mode
    product), so every operator is Kronecker-structured and no :math:`M\times M` matrix exists.

Loss (the negative log joint of the paper, minimized over :math:`U`, the kernel parameters
:math:`\theta` and the precisions :math:`\tau_1, \tau_2`)
    .. math::
        \mathcal L = \tfrac12\operatorname{vec}(U)^\top C^{-1}\operatorname{vec}(U) +
        \tfrac12\sum_j \tfrac{M}{M_j}\log|K_j|
        + \lambda_b\big[\tfrac{\tau_1}{2}\|U_b - g\|^2 - \tfrac{N_b}{2}\log\tau_1\big]
        + \tfrac{\tau_2}{2}\|H(U)\|^2 - \tfrac{M}{2}\log\tau_2,

    with :math:`U_b` the grid values on the boundary (:math:`N_b` nodes), :math:`g` the
    boundary data and :math:`H(U) = \mathcal L[u] - f` the PDE residual at every grid point.

Whitened parameterization (our one departure from the reference code)
    :math:`U = (\otimes_j L_j)\,V` with :math:`L_j L_j^\top = K_j` (Cholesky); Adam runs on
    :math:`V` instead of :math:`U`. This is the *same* function :math:`\mathcal L` (the
    quadratic becomes :math:`\tfrac12\|V\|^2`, the log-determinant is kept) and the map
    :math:`V \mapsto U` is a bijection for every :math:`\theta`, so the minimizers are the same;
    only the optimizer's geometry changes. With :math:`U` as the free variable, Adam's
    per-coordinate steps barely move a high-frequency solution (relative L2 ≈ 0.85 after 2,500
    steps on :math:`\sin x`); with :math:`V` the same problem reaches 1e-2 in 400 steps.
    Derivatives become :math:`\partial^r_{x_j} u = K_j^{(r,0)} L_j^{-\top}` along axis
    :math:`j`, one triangular solve per axis and order.

Cost per step :math:`O(\sum_j M_j^3 + M\sum_j M_j)` time, :math:`O(M + \sum_j M_j^2)` memory
(intermediate mode products are shared between derivatives). Prediction anywhere in the box:
:math:`u(x_*) = \big(\otimes_j k_j(x_{*j}, x_j)\big)C^{-1}\operatorname{vec}(U)`, and derivatives
with :math:`k_j^{(r,0)}(x_{*j}, x_j)` in place of :math:`k_j(x_{*j}, x_j)`.

"Extra GP" (``extra_gp_fraction=c``, the reference's trick for the hardest multi-scale cases):
after a fraction :math:`c` of the Adam steps the spectral-mixture GP is frozen and a second GP
with one Matérn-5/2 component (:math:`\mu = 0`), :math:`u = u_1 + u_2`, is fitted to the same
loss for the remaining steps.

Posterior (the contract of :mod:`bayeslr.models.base`)
    :func:`gphm_model` is the model as a NumPyro function: :math:`V \sim \mathcal N(0, I)`,
    the source observed through the operator at every grid point with precision
    :math:`\tau_2`, the boundary data through a likelihood with precision :math:`\tau_1`
    raised to the power :math:`\lambda_b`. :class:`GPSolver` fits the kernel parameters and
    precisions by type-II MAP (the loss above) and returns a :class:`GPHMPosterior` of this
    function at those values: draws of :math:`V` from the Gauss–Newton (Laplace) Gaussian
    :math:`\mathcal N(V^\star, (I + J^\top J)^{-1})`, exact for a linear operator
    (:func:`laplace_draws`). Its ``solution`` is the posterior mean anywhere in the box.

Package layout: :mod:`~bayeslr.models.gphm.pde` (the :class:`PDE` spec and its checks),
:mod:`~bayeslr.models.gphm.algo` (operators, loss, Gauss–Newton, ``gphm_init``/``gphm_step``
for :func:`bayeslr.infer.loop.run`), :mod:`~bayeslr.models.gphm.model`,
:mod:`~bayeslr.models.gphm.estimator`.
"""

from bayeslr.models.gphm.algo import (
    GPHMProblem,
    GPHMState,
    gauss_newton_step,
    gphm_init,
    gphm_loss,
    gphm_operators,
    gphm_step,
    laplace_draws,
)
from bayeslr.models.gphm.estimator import GPHMPosterior, GPSolver
from bayeslr.models.gphm.model import gphm_model
from bayeslr.models.gphm.pde import PDE, boundary_kinds, boundary_mask

__all__ = [
    "PDE",
    "GPHMPosterior",
    "GPHMProblem",
    "GPHMState",
    "GPSolver",
    "boundary_kinds",
    "boundary_mask",
    "gauss_newton_step",
    "gphm_init",
    "gphm_loss",
    "gphm_model",
    "gphm_operators",
    "gphm_step",
    "laplace_draws",
]
