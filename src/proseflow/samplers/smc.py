"""Sequential Monte Carlo from a normalizing-flow proposal (Prose paper, section 4 of PAPER.md).

Particles x_0 ~ q are moved along the linear energy path

    E_t(x) = (1 - t) E_q(x) + t E_target(x),   E_q = -log q,   t_0 = 0 < t_1 < ... < t_K = 1,

with incremental log weights  log w += -(E_{t_k} - E_{t_{k-1}})(x) = -(t_k - t_{k-1}) (E_target - E_q)(x)
evaluated at the current particles, followed (when the normalised ESS falls below a threshold, and
always at the last level) by systematic resampling and then by Langevin moves targeting exp(-E_{t_k}):

* ``"ula"``  ("continuous" in the paper): unadjusted Langevin, x' = x + h F + sqrt(2h) xi (O(h) bias);
* ``"mala"`` ("discrete" in the paper): the same proposal with a Metropolis-Hastings correction, with the
  step size adapted between levels, log h += adapt_rate * (acceptance - target_accept).

The path ends exactly at t = 1 (the authors' public code looped over ``timesteps[:-1]`` and stopped at
t = 1 - 1/K). The final resampling happens before the moves of the last level, so the returned particles
are equally weighted and the duplicates created by resampling are rejuvenated at t = 1.

Reading of the paper and the authors' code (transferable-samplers): "100 ULA steps" / "50 MALA steps"
are numbers of annealing levels with ONE Langevin step per level (``SMCConfig.paper``). Their MALA spent
two energy+force evaluations per step (at x and at the proposal); here forces at the current particles
are cached, so one MALA step costs one target evaluation per particle. The authors resampled at every
level (ess_threshold 1.0), adapted MALA's step by x1.1 / /1.1 toward 0.55-0.6 acceptance, and, before
SMC, dropped the top 0.2% of the proposals' importance weights and then the proposals with target energy
above 100 kT. All of this is ``SMCConfig.paper``: the filter gives the dropped particles weight zero, so
the first resampling replaces them (the population size stays B); the counts are in ``SMCResult.info``.

Step sizes are in the squared units of the coordinates SMC runs in. :func:`proseflow.samplers.proposals.run_smc`
runs in the flow's normalised coordinates (x = nm / scale_nm, scale_nm = 0.35), so h = 1e-7 there is
1e-7 x 0.35^2 = 1.2e-8 nm^2. The paper's values: ULA h = eps x dt = 1e-5 x 0.01 = 1e-7 (their ULA config's
step size times its time step; larger steps make Euler-Maruyama unstable on the force field's stiff bonds,
see tests/test_smc.py), MALA h = 5e-4 at the start, then adapted.

Statistics that cannot mislead: besides the ESS before each resampling (``ess``, its minimum
``min_ess``), the result counts the distinct configurations of the final set (``n_distinct``: MALA
copies that never moved count once) and the distinct initial proposals they descend from
(``n_distinct_ancestors``: after a collapse onto one proposal this is 1 even though ULA moved every copy).

Energies are dimensionless (kT) and forces are -grad E in kT per coordinate unit. Every call of the
target's ``energy_and_forces`` on a batch of b particles counts as b energy evaluations.
Particles whose energies or forces are non-finite at the start get log weight -inf; a Langevin move into a
non-finite energy (outside the target's support, e.g. a chirality no mirror fixes, or an overflow) is not
taken: MALA rejects it, and ULA, which has no accept/reject step, leaves that particle where it is (its
``acceptance`` is the fraction of finite moves), so one step into a forbidden region cannot wipe out a
population; a ``RuntimeError`` is raised if every weight vanishes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy.special import logsumexp

from proseflow.samplers.config import PAPER_STEP_SIZE, SMCConfig  # noqa: F401  (re-exported)
from proseflow.samplers.resampling import count_distinct, kish_ess, systematic_resample

EnergyFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class EnergyModel(Protocol):
    """Anything with ``energy_and_forces(x [B, ...]) -> (E [B], F = -grad E [B, ...])``."""

    def energy_and_forces(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


ProposalEnergy = EnergyModel  # E_q = -log q of the flow, F_q = grad log q
TargetEnergy = EnergyModel  # E / kT and forces / kT


@dataclass
class SMCResult:
    x: np.ndarray  # final particles, shape of x0
    log_weights: np.ndarray  # [B] normalised, uniform (-log B) after the final resampling
    target_energy: np.ndarray  # [B] E_target of the final particles (inf if invalid)
    t_schedule: np.ndarray  # [K + 1]
    ess: np.ndarray  # [K] normalised ESS after the reweighting at each level, before resampling
    resampled: np.ndarray  # [K] bool
    acceptance: np.ndarray  # [K] mean acceptance of the moves at each level (ULA: fraction of finite moves)
    step_sizes: np.ndarray  # [K] step size used at each level
    n_energy_evals: int  # per-particle target evaluations
    n_proposal_evals: int  # per-particle proposal (flow) evaluations
    final_log_weights_pre_resampling: np.ndarray  # [B] normalised log weights at t = 1
    final_ess_pre_resampling: float
    log_z: float  # estimate of log integral exp(-E_target) (q is normalised)
    n_distinct: int = 0  # distinct configurations among the final particles
    n_distinct_ancestors: int = 0  # distinct initial proposals the final particles descend from
    info: dict = field(default_factory=dict)  # kernel, final_step_size, n_dropped_top_weight, n_dropped_high_energy
    cess: np.ndarray | None = None  # [K] conditional ESS of each level's increment (adaptive mode: >= target_cess)

    @property
    def min_ess(self) -> float:
        """The smallest normalised ESS before any resampling of the run."""
        return float(np.min(self.ess))


def _as_fn(model) -> EnergyFn:
    return model.energy_and_forces if hasattr(model, "energy_and_forces") else model


class _Counted:
    """Calls an energy function on flat [B, D] arrays; returns clean arrays and a validity mask."""

    def __init__(self, fn: EnergyFn, shape: tuple[int, ...]):
        self.fn, self.shape, self.count = fn, shape, 0

    def __call__(self, x: np.ndarray):
        b = len(x)
        self.count += b
        with np.errstate(invalid="ignore", over="ignore"):
            e, f = self.fn(x.reshape((b, *self.shape)))
            e = np.asarray(e, dtype=float).reshape(b)
            f = np.asarray(f, dtype=float).reshape(b, -1)
        ok = np.isfinite(e) & np.isfinite(f).all(axis=1)
        return np.where(ok, e, np.inf), np.where(ok[:, None], f, 0.0), ok


def smc(x0, log_q0, energy_q_fn, target_energy_and_forces_fn, config: SMCConfig, rng) -> SMCResult:
    """Anneal exact proposal samples x0 (log density log_q0) to exp(-E_target); see the module doc.

    ``energy_q_fn`` / ``target_energy_and_forces_fn``: an ``EnergyModel`` or a plain callable
    ``x -> (E [B], F [B, ...])``. If E_q(x0) differs from -log_q0 (e.g. by a constant), the initial
    weights exp(-E_q(x0) - log_q0) correct for it, so the path always starts at exp(-E_q) exactly.
    """
    rng = np.random.default_rng(rng)
    x0 = np.asarray(x0, dtype=float)
    b, shape = x0.shape[0], x0.shape[1:]
    ts = [0.0] if config.adaptive else list(config.t_schedule())
    n_lev = config.max_levels if config.adaptive else len(ts) - 1
    prop = _Counted(_as_fn(energy_q_fn), shape)
    targ = _Counted(_as_fn(target_energy_and_forces_fn), shape)

    x = x0.reshape(b, -1).copy()
    eq, fq, okq = prop(x)
    ep, fp, okp = targ(x)
    ok = okq & okp
    log_w = np.where(ok, -eq - np.asarray(log_q0, dtype=float).reshape(b), -np.inf)
    _check_alive(log_w, 0)
    log_w, n_top, n_high = _prefilter(log_w, ep, eq, config)
    ancestors = np.arange(b)
    log_z = float(logsumexp(log_w) - np.log(b))
    h = float(config.step_size)
    lo, hi = config.step_size_bounds

    ess = np.zeros(n_lev)
    resampled = np.zeros(n_lev, dtype=bool)
    acc = np.full(n_lev, np.nan)
    steps = np.zeros(n_lev)
    cess = np.full(n_lev, np.nan)
    for k in range(1, n_lev + 1):
        if config.adaptive:
            remaining = n_lev - k + 1  # with one level left, go to t = 1
            ts.append(1.0 if remaining == 1 else next_level(ts[-1], log_w, ep - eq, ok, config.target_cess))
        t, dt = ts[k], ts[k] - ts[k - 1]
        with np.errstate(invalid="ignore"):
            inc = np.where(ok, -dt * (ep - eq), -np.inf)
        cess[k - 1] = conditional_ess(log_w, inc)
        log_z += float(logsumexp(log_w - logsumexp(log_w) + inc))
        log_w = log_w + inc
        _check_alive(log_w, k)
        ess[k - 1] = kish_ess(log_w)
        if t == 1.0:
            n_lev = k
            final_log_w = log_w - logsumexp(log_w)
            final_ess = ess[k - 1]
        if ess[k - 1] < config.ess_threshold or k == n_lev:
            idx = systematic_resample(log_w, len(log_w), rng)
            x, eq, fq, ep, fp, ok = x[idx], eq[idx], fq[idx], ep[idx], fp[idx], ok[idx]
            ancestors = ancestors[idx]
            log_w = np.zeros(b)
            resampled[k - 1] = True

        steps[k - 1] = h
        n_acc = n_tried = 0
        for _ in range(config.n_mcmc_steps):
            alive = np.isfinite(log_w)
            xi = rng.standard_normal(x.shape)
            f_cur = (1 - t) * fq + t * fp
            y = x + h * f_cur + np.sqrt(2 * h) * xi
            eq_y, fq_y, okq_y = prop(y)
            ep_y, fp_y, okp_y = targ(y)
            ok_y = okq_y & okp_y
            if config.kernel == "mala":
                with np.errstate(invalid="ignore", over="ignore"):
                    e_cur = np.where(ok, (1 - t) * eq + t * ep, np.inf)
                    e_y = np.where(ok_y, (1 - t) * eq_y + t * ep_y, np.inf)
                    f_y = (1 - t) * fq_y + t * fp_y
                    log_fwd = -0.5 * np.sum(xi**2, axis=1)
                    log_rev = -np.sum((x - y - h * f_y) ** 2, axis=1) / (4 * h)
                    log_alpha = -(e_y - e_cur) + log_rev - log_fwd
                accept = ok_y & (np.log(rng.random(b)) < log_alpha)
            elif config.kernel == "ula":
                accept = ok_y
                # no accept/reject, but no move into a non-finite energy: that particle stays where it is
            else:
                raise ValueError(f"unknown kernel {config.kernel!r}")
            n_acc += int(np.sum(accept & alive))
            n_tried += int(np.sum(alive))
            a = accept[:, None]
            x, fq, fp = np.where(a, y, x), np.where(a, fq_y, fq), np.where(a, fp_y, fp)
            eq, ep, ok = np.where(accept, eq_y, eq), np.where(accept, ep_y, ep), np.where(accept, ok_y, ok)
        if config.n_mcmc_steps > 0:
            _check_alive(log_w, k)
            acc[k - 1] = n_acc / max(n_tried, 1)
            if config.adapts():
                h = float(np.clip(_adapted(h, acc[k - 1], config), lo, hi))
        if t == 1.0:
            break
    ess, resampled, acc, steps, cess = (a[:n_lev] for a in (ess, resampled, acc, steps, cess))

    if not np.isfinite(log_w).all():  # a final ULA move killed particles: keep the set equally weighted
        idx = systematic_resample(log_w, len(log_w), rng)
        x, ep, ok, log_w, ancestors = x[idx], ep[idx], ok[idx], np.zeros(b), ancestors[idx]
    log_w_out = log_w - logsumexp(log_w)
    return SMCResult(
        x=x.reshape((b, *shape)),
        log_weights=log_w_out,
        target_energy=np.where(ok, ep, np.inf),
        t_schedule=np.asarray(ts, dtype=float),
        ess=ess,
        resampled=resampled,
        acceptance=acc,
        step_sizes=steps,
        n_energy_evals=targ.count,
        n_proposal_evals=prop.count,
        final_log_weights_pre_resampling=final_log_w,
        final_ess_pre_resampling=float(final_ess),
        log_z=log_z,
        n_distinct=count_distinct(x),
        n_distinct_ancestors=len(np.unique(ancestors)),
        info={"kernel": config.kernel, "final_step_size": h, "n_dropped_top_weight": n_top,
              "n_dropped_high_energy": n_high, "adaptive": config.adaptive},
        cess=cess,
    )


def conditional_ess(log_w: np.ndarray, inc: np.ndarray) -> float:
    """Conditional ESS of an increment (Zhou, Johansen & Aston 2016): (sum W w)^2 / sum W w^2 with W the
    normalised current weights and w = exp(inc); 1 when the increment is constant over the live particles."""
    with np.errstate(invalid="ignore"):
        a = np.where(np.isfinite(log_w) & np.isfinite(inc), log_w - logsumexp(log_w) + inc, -np.inf)
    if not np.isfinite(a).any():
        return 0.0
    return float(np.exp(2 * logsumexp(a) - logsumexp(a + inc)))


def next_level(t: float, log_w: np.ndarray, delta_e: np.ndarray, ok: np.ndarray, target_cess: float,
               tol: float = 1e-6) -> float:
    """The largest t' in (t, 1] whose increment -(t' - t) (E_target - E_q) keeps the conditional ESS at or above
    ``target_cess`` (bisection on t'; the conditional ESS falls monotonically as t' grows)."""
    def cess_at(t_next):
        with np.errstate(invalid="ignore"):
            return conditional_ess(log_w, np.where(ok, -(t_next - t) * delta_e, -np.inf))

    if cess_at(1.0) >= target_cess:
        return 1.0
    lo, hi = t, 1.0
    while hi - lo > tol * max(1.0 - t, 1e-12):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cess_at(mid) >= target_cess else (lo, mid)
    return lo if lo > t else 0.5 * (t + hi)


def _prefilter(log_w, e_target, e_q, config: SMCConfig) -> tuple[np.ndarray, int, int]:
    """The paper's filter before SMC: weight zero for the top ``drop_top_fraction`` of the importance
    weights -E_target + E_q (count rounded down, among finite ones), then for E_target > max_target_energy."""
    log_w = log_w.copy()
    with np.errstate(invalid="ignore"):
        log_iw = np.where(np.isfinite(log_w), -e_target + e_q, -np.inf)
    n_top = int(np.floor(config.drop_top_fraction * np.isfinite(log_iw).sum()))
    if n_top:
        log_w[np.argpartition(log_iw, -n_top)[-n_top:]] = -np.inf
    n_high = 0
    if config.max_target_energy is not None:
        high = np.isfinite(log_w) & (e_target > config.max_target_energy)
        n_high = int(high.sum())
        log_w[high] = -np.inf
    if not np.isfinite(log_w).any():
        raise RuntimeError(
            f"SMC: no proposal left after dropping the top {config.drop_top_fraction:.2%} of the weights and "
            f"those above {config.max_target_energy} kT (lowest target energy {np.min(e_target):.4g} kT)"
        )
    return log_w, n_top, n_high


def _adapted(h: float, acceptance: float, config: SMCConfig) -> float:
    if config.adapt_rule == "band":
        low, high = config.target_accept_band
        return h * config.adapt_factor if acceptance > high else h / config.adapt_factor if acceptance < low else h
    if config.adapt_rule == "exp":
        return h * np.exp(config.adapt_rate * (acceptance - config.target_accept))
    raise ValueError(f"adapt_rule must be 'exp' or 'band', got {config.adapt_rule!r}")


def _check_alive(log_w: np.ndarray, level: int) -> None:
    if not np.isfinite(log_w).any():
        raise RuntimeError(
            f"SMC: all particle weights vanished at level {level} (every particle has a non-finite "
            "energy/force or moved into one); check the energies, filter the proposals or reduce the step"
        )
