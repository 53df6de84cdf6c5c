r"""FunBaT: functional Bayesian Tucker decomposition of continuous-indexed tensors.

Fang et al., "Functional Bayesian Tucker Decomposition for Continuous-indexed Tensor Data",
ICLR 2024 (arXiv 2311.04829).

Model
    Entries :math:`y_n` observed at continuous coordinates :math:`i^n = (i^n_1, \dots, i^n_K)`
    (latitude, longitude, time, wavelength, ...):

    .. math::
        y_n = \sum_{r_1..r_K} W_{r_1 \dots r_K} \prod_k u^k_{r_k}(i^n_k) + \varepsilon_n
            = \operatorname{vec}(W)^\top \big(u^1(i^n_1) \otimes \dots \otimes u^K(i^n_K)\big)
              + \varepsilon_n,
        \qquad \varepsilon_n \sim N(0, \tau^{-1}),

    each latent function :math:`u^k_r \sim GP(0, \kappa_k)` independently with a kernel that
    has an exact state-space form (Matérn 1/2, 3/2, 5/2, ...; :mod:`bayeslr.gp.kernels`),
    :math:`\operatorname{vec}(W) \sim N(0, I)` (an :math:`R^K` Tucker core) and
    :math:`\tau \sim \operatorname{Gamma}(a_0, b_0)`. FunBaT-CP (``cp=True``) fixes :math:`W` to
    the superdiagonal of ones: :math:`y_n = \sum_r \prod_k u^k_r(i^n_k) + \varepsilon_n`.

Inference (conditional moment matching / message passing, the paper's algorithm)
    The approximate posterior is :math:`q = \prod_k \prod_j N(u^k(t^k_j) \mid \mu^k_j,
    S^k_j)\cdot N(\operatorname{vec}W \mid \bar w, \Sigma_W)\cdot\operatorname{Gamma}(\tau
    \mid a, b)` over the sorted unique coordinates :math:`t^k_1 < \dots < t^k_{M_k}` of each
    mode (the latent functions of one mode are coupled through the GP prior along the mode).
    One epoch:

    1. For each mode :math:`k`, each entry sends a Gaussian message to :math:`u^k(i^n_k)` by
       taking the expectation of the log-likelihood over the other factors:

       .. math::
           \Lambda_n = E[\tau]\, \bar W_{(k)} E[z_{\setminus k} z_{\setminus k}^\top]
           \bar W_{(k)}^\top, \qquad
           \eta_n = E[\tau]\, y_n \bar W_{(k)} E[z_{\setminus k}],

       with :math:`z_{\setminus k} = \otimes_{j\ne k} u^j(i^n_j)` (so :math:`E[z] =
       \otimes\mu`, :math:`E[zz^\top] = \otimes(S + \mu\mu^\top)`) and :math:`\bar W_{(k)}` the
       mode-:math:`k` unfolding of the core mean. Messages are kept as **sums per unique
       coordinate** (damping is linear, so nothing per entry is stored), damped
       :math:`\Lambda \leftarrow \rho_U\Lambda_{\text{old}} + (1 - \rho_U)\Lambda_{\text{new}}`,
       and the posterior of the :math:`R` functions of the mode is the GP posterior under
       these Gaussian sites: a Kalman filter and RTS smoother over the :math:`M_k` unique
       coordinates in information form
       (:func:`bayeslr.linalg.statespace.smooth_gaussian_sites`), :math:`O(M_k R^3 d^3)`.
    2. Core (Tucker): :math:`\Sigma_W = (I + \Lambda_W)^{-1}`, :math:`\bar w = \Sigma_W\eta_W`
       with :math:`\Lambda_W = E[\tau]\sum_n E[z_nz_n^\top]`, :math:`\eta_W = E[\tau]\sum_n y_n
       E[z_n]`, damped with :math:`\rho_W`. Unlike the reference code, the prior precision
       :math:`I` of the model is included.
    3. Noise: :math:`a = a_0 + N/2`, :math:`b = b_0 + \tfrac12\sum_n E[(y_n - w^\top z_n)^2]`
       with :math:`E[(y - w^\top z)^2] = y^2 - 2y\bar w^\top E[z] + \operatorname{tr}((\Sigma_W +
       \bar w\bar w^\top)E[zz^\top])`, damped with :math:`\rho_\tau`; :math:`E[\tau] = a/b`.

    As in the paper, the messages to :math:`u` use the core mean only (the core's covariance
    enters the core, noise and predictive updates). Everything runs in one jitted epoch with
    static shapes. Cost per epoch :math:`O(N K R^{2K} + \sum_k M_k R^3 d^3)` for Tucker
    (:math:`O(NKR^2 + \sum_k M_k R^3 d^3)` for CP), memory :math:`O(N R^2 + \sum_k M_k R^2)`:
    linear in the entries and in the unique coordinates. The reference code keeps per-entry
    messages of size :math:`R^K\times R^K` (12.8 GB at :math:`R = 7`); we keep sums.

Kernels and rank (chosen by the library, not by hand)
    Every mode's kernel hyperparameters :math:`\theta_k` (variance, lengthscale, ...) are
    learned inside the message passing (:class:`KernelLearning`): before each epoch a few Adam
    steps on :math:`-\log Z_k(\theta_k) + \tfrac12\|(\theta_k - \theta^0_k)/s\|^2` with
    :math:`\log Z_k` the Kalman evidence of the mode's :math:`R` GPs under its current site
    messages (:func:`bayeslr.linalg.statespace.gaussian_sites_log_evidence`), expectation
    propagation's type-II objective, and a log-normal prior around the starting kernel. The
    fit stops when the training RMSE has settled (its relative spread over a window of
    epochs). ``rank="auto"`` (the default) picks :math:`R` on a random validation split of the
    training entries, growing through the candidates while the validation RMSE improves, and
    continues the chosen fit on all training entries.

Prediction
    At a new coordinate :math:`t_*` of mode :math:`k` (between, before or after the training
    coordinates) the posterior of :math:`u^k(t_*)` is the exact state-space interpolation or
    extrapolation: :math:`t_*` joins the grid as a site with zero precision and the smoother
    runs again. The predictive mean and variance of an entry are

    .. math::
        E[y_*] = \bar w^\top\big(\otimes_k\mu^k_*\big), \qquad
        \operatorname{var}[y_*] = \operatorname{tr}\big((\Sigma_W + \bar w\bar w^\top)
        \otimes_k(S^k_* + \mu^k_*\mu^{k\top}_*)\big) - E[y_*]^2 + 1/E[\tau].

Posterior and model function
    :class:`FunBaT` returns a :class:`FunBaTPosterior` of :func:`funbat_model`: draws of
    ``u_<k>`` (marginal per coordinate, as :math:`q` factorizes), ``W`` and ``tau``;
    ``predict`` draws :math:`y` through the model function, at unseen coordinates too;
    ``moments`` and ``latent`` are the closed-form fast paths above.

Layout
    ``algo.py``: the epoch (:func:`funbat_epoch`) and its ``init``/``step`` for
    :func:`bayeslr.infer.loop.run`, prediction by state-space interpolation; ``model.py``:
    :func:`funbat_model`; ``estimator.py``: :class:`FunBaT`, :class:`FunBaTPosterior`.

Defects of the reference code that are *not* reproduced (each has a test): the core index
order (one ``einsum`` convention for every mode here), the random initial filter mean (the
prior mean is 0), negative variances when predicting before the first coordinate (the exact
smoother is used), and no predictive variance.
"""

from bayeslr.models.funbat.algo import (
    FunBaTData,
    FunBaTFit,
    FunBaTProblem,
    FunBaTState,
    KernelLearning,
    fitted_kernels,
    funbat_data,
    funbat_epoch,
    funbat_init,
    funbat_step,
)
from bayeslr.models.funbat.estimator import FunBaT, FunBaTPosterior
from bayeslr.models.funbat.model import funbat_model

__all__ = [
    "FunBaT",
    "FunBaTData",
    "FunBaTFit",
    "FunBaTPosterior",
    "FunBaTProblem",
    "FunBaTState",
    "KernelLearning",
    "fitted_kernels",
    "funbat_data",
    "funbat_epoch",
    "funbat_init",
    "funbat_model",
    "funbat_step",
]
