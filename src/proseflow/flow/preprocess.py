"""Coordinate preprocessing for training and the density bookkeeping for sampling (PAPER.md sections 3-4).

Training input: x_nm -> centre on the unweighted centroid of the real atoms -> divide by ``scale``
(0.35 nm) -> random SO(3) rotation -> add one Gaussian shift c ~ N(0, I_3 / N) to all real atoms
(centre-of-mass augmentation; N = number of real atoms). The flow therefore models a density q(x)
over all 3N coordinates, centroid included, in normalised units.

Sampling output: x (normalised, with some centroid c) -> ``to_nm`` removes c and multiplies by the
scale. ``proposal_log_prob_nm`` turns the flow's log q(x) into the log density of that centred
sample in nm (see its docstring for the exact measure and the centre-of-mass term).

All functions take a padding mask [B, N] (True = real atom) and leave padding rows at zero.
"""

from __future__ import annotations

import math

import torch

SCALE_NM = 0.35


def _m(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return mask.bool()[..., None].to(x.dtype)


def n_atoms(mask: torch.Tensor) -> torch.Tensor:
    return mask.bool().sum(dim=1)


def centroid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unweighted centroid of the real atoms: [B, N, 3] -> [B, 3]."""
    m = _m(mask, x)
    return (x * m).sum(dim=1) / m.sum(dim=1)


def remove_centroid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Centre the real atoms on their centroid; padding rows are set to zero."""
    return (x - centroid(x, mask)[:, None]) * _m(mask, x)


def random_rotations(
    n: int, generator: torch.Generator | None = None, device=None, dtype=torch.float32
) -> torch.Tensor:
    """n rotation matrices [n, 3, 3], uniform (Haar) on SO(3): from unit quaternions q ~ N(0, I_4)/|.|."""
    q = torch.randn(n, 4, generator=generator, device=device, dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(dim=1)
    r = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        dim=1,
    )
    return r.view(n, 3, 3).to(dtype)


def rotate(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Apply one rotation per system: x [B, N, 3], rotations [B, 3, 3] -> x R^T."""
    return x @ rotations.transpose(1, 2)


def com_shift(mask: torch.Tensor, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """One centre-of-mass shift per system, c ~ N(0, I_3 / N) in normalised units: [B, 1, 3]."""
    sigma = n_atoms(mask).to(dtype).rsqrt()
    eps = torch.randn(mask.shape[0], 1, 3, generator=generator, device=mask.device, dtype=dtype)
    return eps * sigma[:, None, None]


def normalise(x_nm: torch.Tensor, mask: torch.Tensor, scale: float = SCALE_NM) -> torch.Tensor:
    """nm -> centred, normalised coordinates (no augmentation)."""
    return remove_centroid(x_nm, mask) / scale


def preprocess_train(
    x_nm: torch.Tensor,
    mask: torch.Tensor,
    scale: float = SCALE_NM,
    rotation: bool = True,
    com_augment: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The training transform: centre, scale, random SO(3) rotation, centre-of-mass augmentation."""
    x = normalise(x_nm, mask, scale)
    if rotation:
        x = rotate(x, random_rotations(x.shape[0], generator, x.device, x.dtype))
    if com_augment:
        x = x + com_shift(mask, generator, x.dtype).to(x.device)
    return x * _m(mask, x)


def to_nm(x: torch.Tensor, mask: torch.Tensor, scale: float = SCALE_NM) -> torch.Tensor:
    """Model sample (normalised, any centroid) -> centred coordinates in nm; padding rows zero."""
    return remove_centroid(x, mask) * scale


def log_abs_det_scale(n: torch.Tensor | int, scale: float = SCALE_NM, centred: bool = True):
    """log|det| of the map normalised -> nm (x_nm = scale * x) on the density's dimensions.

    densities in nm: log p_nm = log p_norm + log_abs_det_scale(...) with this returning
    -3N log(scale) for a density over all 3N coordinates (centred=False) and -(3N - 3) log(scale)
    for a density over the centred (3N - 3)-dimensional subspace (centred=True).
    """
    dims = 3 * n - 3 if centred else 3 * n
    return -dims * math.log(scale)


def log_chi3(r: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log of the chi density with 3 degrees of freedom and scale sigma (the law of |c|, c ~ N(0, sigma^2 I_3)):
    f(r) = sqrt(2/pi) r^2 / sigma^3 exp(-r^2 / (2 sigma^2)), r >= 0."""
    return 0.5 * math.log(2 / math.pi) + 2 * torch.log(r) - 3 * torch.log(sigma) - r**2 / (2 * sigma**2)


def log_normal3(c: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log N(c; 0, sigma^2 I_3) for c [B, 3]."""
    return -(c**2).sum(-1) / (2 * sigma**2) - 1.5 * math.log(2 * math.pi) - 3 * torch.log(sigma)


def com_log_density(c: torch.Tensor, n: torch.Tensor, kind: str = "chi") -> torch.Tensor:
    """log h(c) of the centroid c [B, 3] (normalised units) given N atoms, sigma = 1/sqrt(N).

    kind="chi":      log chi_3(|c|; sigma)   (the paper's correction; see proposal_log_prob_nm)
    kind="gaussian": log N(c; 0, sigma^2 I_3) = log chi_3(|c|; sigma) - log(4 pi |c|^2)
    """
    sigma = n.to(c.dtype).rsqrt()
    if kind == "chi":
        return log_chi3(c.norm(dim=-1), sigma)
    if kind == "gaussian":
        return log_normal3(c, sigma)
    raise ValueError(f"unknown centre-of-mass correction {kind!r}")


def proposal_log_prob_nm(
    log_q: torch.Tensor,
    x: torch.Tensor,
    mask: torch.Tensor,
    scale: float = SCALE_NM,
    com_correction: str = "chi",
) -> torch.Tensor:
    """log q of the centred sample ``to_nm(x, mask, scale)`` in nm, from the flow's log q(x) [B].

    x [B, N, 3] is the flow sample in normalised units (centroid c = centroid(x, mask)), log_q its
    flow log density over all 3N coordinates. Write x = y + 1 (x) c with y centred. In the
    coordinates (y in orthonormal coordinates of the centred subspace V, c in R^3) Lebesgue measure
    factorises as dx = N^{3/2} dy dc, so the flow's joint density is q(y, c) = N^{3/2} q(x). The
    centred sample y has the marginal q_V(y) = int q(y, c) dc, which is intractable; the standard
    augmented-space estimate uses any density h on R^3:

        log q_V(y) ~= log q(x) + 1.5 log N - log h(c),

    i.e. SNIS with weight pi(y) h(c) / q(y, c) targets pi(y) h(c), whose y-marginal is pi, for any
    proper h. Returned: that quantity plus -(3N - 3) log(scale), i.e. a log density w.r.t. the
    (3N - 3)-dimensional Lebesgue (Hausdorff) measure on the centred subspace in nm.

    com_correction="gaussian": h = N(0, I_3 / N), exactly the training augmentation of c, so a
        perfect flow q(x) = p_data(y) h(c) gives log q_V = log p_data(y) exactly (and, e.g., for
        q = N(0, I_3N) this equals the exact marginal log N_{3N-3}(y); see the tests).
    com_correction="chi" (paper, PAPER.md section 4; the authors' code): h(c) = chi_3(|c|; 1/sqrt(N)),
        the density of the *norm* |c| used as if it were a density of c. As a function on R^3,
        chi_3(|c|) = 4 pi |c|^2 N(c; 0, I_3 / N), so this equals the gaussian choice minus
        log(4 pi |c|^2): the implied extended target is pi(y) * |c|^2 N(c; 0, I/N), still with
        y-marginal pi (so SNIS stays consistent) but whose |c| law (chi with 5 degrees of freedom)
        differs from the training one; for a perfect flow the weights then vary as |c|^2, costing a
        factor E[r^2]^2 / E[r^4] = 9/15 = 0.6 in Kish ESS relative to "gaussian".
    """
    c = centroid(x, mask)
    n = n_atoms(mask)
    log_qv = log_q + 1.5 * torch.log(n.to(log_q.dtype)) - com_log_density(c, n, com_correction)
    return log_qv + log_abs_det_scale(n.to(log_q.dtype), scale, centred=True)
