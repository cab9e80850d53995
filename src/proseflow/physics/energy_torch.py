"""Batched, differentiable PyTorch energy of an OpenMM ``System`` (amber14 + OBC1), exact to OpenMM.

Every parameter is read from the ``System`` that :func:`proseflow.physics.system.create_system` returns. Supported:
``HarmonicBondForce``, ``HarmonicAngleForce``, ``PeriodicTorsionForce``, ``NonbondedForce`` (NoCutoff or
CutoffNonPeriodic: reaction field, optional LJ switch; exceptions without cutoff, plain Coulomb) and the
``CustomGBForce`` that ``implicit/obc1.xml`` builds (OBC1 Born radii, polar energy with the cutoff shift, ACE
surface term), whose expression strings are checked against the ones implemented here. Any other force or
expression raises ``UnsupportedForceError`` naming it; ``CMMotionRemover`` (no energy) is ignored.

Positions are ``[B, N, 3]`` in nm. Non-finite input raises ``ValueError``; NaN or -inf energies (overlapping
atoms) come back as +inf, and the forces of such samples as zeros.
"""

from __future__ import annotations

import math
import re

import numpy as np
import openmm
import torch

from proseflow.physics.system import MAX_FINITE_ENERGY_KJ_PER_MOL, kT_kJ_per_mol

ONE_4PI_EPS0 = 138.93545764438198  # kJ mol^-1 nm e^-2, OpenMM's value (SimTKOpenMMRealType.h)
# Default samples per chunk = this / N^2: bounds memory; eager keeps each [b, N, N] intermediate near L2 size.
PAIR_ELEMENTS_PER_CHUNK = {"eager": 2**17, "compiled": 2**19}


class UnsupportedForceError(ValueError):
    """A force, method or expression of the System that this backend does not implement."""


# --- OBC1 CustomGBForce expressions, as openmm/app/internal/customgbforces.py (OpenMM 8.6) writes them. ---
# Whitespace is ignored; ``{name}`` is a number read from the expression.
_GB_PARAMS = ";solventDielectric={solvent_dielectric};soluteDielectric={solute_dielectric};kappa={kappa};offset={offset}"
_OBC1_I = ("select(step(r+sr2-or1),0.5*(1/L-1/U+0.25*(r-sr2^2/r)*(1/(U^2)-1/(L^2))+0.5*log(L/U)/r),0);"
           "U=r+sr2;L=max(or1,D);D=abs(r-sr2)")
_OBC1_B = "1/(1/or-tanh(0.8*psi+2.909125*psi^3)/radius);psi=I*or;radius=or+offset;offset={offset}"
_GB_SELF = "-0.5*138.935485*(1/soluteDielectric-1/solventDielectric)*charge^2/B" + _GB_PARAMS
_GB_ACE = "28.3919551*(radius+0.14)^2*(radius/B)^6;radius=or+offset" + _GB_PARAMS
_GB_PAIR_SHIFTED = ("-138.935485*(1/soluteDielectric-1/solventDielectric)*charge1*charge2*(1/f-{inverse_cutoff});"
                    "f=sqrt(r^2+B1*B2*exp(-r^2/(4*B1*B2)))" + _GB_PARAMS)
_GB_PAIR_PLAIN = ("-138.935485*(1/soluteDielectric-1/solventDielectric)*charge1*charge2/f;"
                  "f=sqrt(r^2+B1*B2*exp(-r^2/(4*B1*B2)))" + _GB_PARAMS)
_GB_COULOMB_KJ_NM = 138.935485  # the constant written in the GB expressions (differs from ONE_4PI_EPS0)
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"


def _match_expression(template: str, expression: str) -> dict[str, float] | None:
    """Numbers named in ``template`` if ``expression`` has exactly its form (an optional ``;cutoff=x`` tail)."""
    parts = re.split(r"\{(\w+)\}", template)
    pattern, names = "", []
    for k, part in enumerate(parts):
        if k % 2:
            pattern += _NUMBER
            names.append(part)
        else:
            pattern += re.escape(part)
    match = re.fullmatch(pattern + r"(?:;cutoff=" + _NUMBER + ")?", re.sub(r"\s+", "", expression))
    if match is None:
        return None
    return {name: float(v) for name, v in zip(names, match.groups(), strict=False)}


# --------------------------------------------------------------------------------------------- geometry
def _norm(v: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.clamp_min((v * v).sum(-1), torch.finfo(v.dtype).tiny))


def _angle_rad(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle between vectors (atan2 form: accurate near 0 and pi); NaN, as in OpenMM, if one has length 0."""
    theta_rad = torch.atan2(_norm(torch.linalg.cross(a, b)), (a * b).sum(-1))
    defined = ((a * a).sum(-1) * (b * b).sum(-1)) > 0
    return torch.where(defined, theta_rad, math.nan)


def _dihedral_rad(p0, p1, p2, p3) -> torch.Tensor:
    """IUPAC dihedral angle p0-p1-p2-p3 in (-pi, pi], OpenMM's sign convention."""
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
    y = _norm(b2) * (b1 * n2).sum(-1)
    return torch.atan2(y, (n1 * n2).sum(-1))


def _as_tensor(values, dtype, device=None) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------- terms
class _PairGeometry:
    """All-pairs distances ``[b, N, N]``; the diagonal is set to 1 nm so masked self pairs stay finite."""

    def __init__(self, positions_nm: torch.Tensor, diagonal: torch.Tensor):
        dx, dy, dz = (c[:, :, None] - c[:, None, :] for c in positions_nm.unbind(-1))
        self.r2 = dx * dx + dy * dy + dz * dz + diagonal
        self.r = torch.sqrt(self.r2)
        self.inverse_r = 1 / self.r
        self.inverse_r2 = self.inverse_r * self.inverse_r


class _HarmonicBonds(torch.nn.Module):
    def __init__(self, force: openmm.HarmonicBondForce, dtype):
        super().__init__()
        rows = [force.getBondParameters(i) for i in range(force.getNumBonds())]
        self.register_buffer("atoms", torch.tensor([[r[0], r[1]] for r in rows], dtype=torch.long).reshape(-1, 2))
        self.register_buffer("length_nm", _as_tensor([r[2]._value for r in rows], dtype))
        self.register_buffer("k_kJ_per_mol_nm2", _as_tensor([r[3]._value for r in rows], dtype))

    def forward(self, positions_nm: torch.Tensor, pairs: _PairGeometry) -> torch.Tensor:
        r_nm = _norm(positions_nm[:, self.atoms[:, 1]] - positions_nm[:, self.atoms[:, 0]])
        return (0.5 * self.k_kJ_per_mol_nm2 * (r_nm - self.length_nm) ** 2).sum(-1)


class _HarmonicAngles(torch.nn.Module):
    def __init__(self, force: openmm.HarmonicAngleForce, dtype):
        super().__init__()
        rows = [force.getAngleParameters(i) for i in range(force.getNumAngles())]
        self.register_buffer("atoms", torch.tensor([r[:3] for r in rows], dtype=torch.long).reshape(-1, 3))
        self.register_buffer("theta0_rad", _as_tensor([r[3]._value for r in rows], dtype))
        self.register_buffer("k_kJ_per_mol_rad2", _as_tensor([r[4]._value for r in rows], dtype))

    def forward(self, positions_nm: torch.Tensor, pairs: _PairGeometry) -> torch.Tensor:
        p = positions_nm[:, self.atoms]  # [b, A, 3, 3]
        theta_rad = _angle_rad(p[:, :, 0] - p[:, :, 1], p[:, :, 2] - p[:, :, 1])
        return (0.5 * self.k_kJ_per_mol_rad2 * (theta_rad - self.theta0_rad) ** 2).sum(-1)


class _PeriodicTorsions(torch.nn.Module):
    def __init__(self, force: openmm.PeriodicTorsionForce, dtype):
        super().__init__()
        rows = [force.getTorsionParameters(i) for i in range(force.getNumTorsions())]
        self.register_buffer("atoms", torch.tensor([r[:4] for r in rows], dtype=torch.long).reshape(-1, 4))
        self.register_buffer("periodicity", _as_tensor([r[4] for r in rows], dtype))
        self.register_buffer("phase_rad", _as_tensor([r[5]._value for r in rows], dtype))
        self.register_buffer("k_kJ_per_mol", _as_tensor([r[6]._value for r in rows], dtype))

    def forward(self, positions_nm: torch.Tensor, pairs: _PairGeometry) -> torch.Tensor:
        p = positions_nm[:, self.atoms]  # [b, T, 4, 3]
        phi_rad = _dihedral_rad(p[:, :, 0], p[:, :, 1], p[:, :, 2], p[:, :, 3])
        return (self.k_kJ_per_mol * (1 + torch.cos(self.periodicity * phi_rad - self.phase_rad))).sum(-1)


def _lennard_jones(inverse_r2: torch.Tensor, sigma2_nm2: torch.Tensor, four_epsilon_kJ: torch.Tensor) -> torch.Tensor:
    sr2 = sigma2_nm2 * inverse_r2
    sr6 = sr2 * sr2 * sr2
    return four_epsilon_kJ * (sr6 * sr6 - sr6)


class _Nonbonded(torch.nn.Module):
    """Lennard-Jones + Coulomb over all pairs not listed as exceptions (as N x N matrices); exceptions apart."""

    def __init__(self, force: openmm.NonbondedForce, num_atoms: int, dtype):
        super().__init__()
        method = force.getNonbondedMethod()
        if method not in (openmm.NonbondedForce.NoCutoff, openmm.NonbondedForce.CutoffNonPeriodic):
            raise UnsupportedForceError(f"NonbondedForce method {method} (only NoCutoff, CutoffNonPeriodic)")
        if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets() \
                or force.getNumGlobalParameters():
            raise UnsupportedForceError("NonbondedForce with parameter offsets or global parameters")
        self.use_cutoff = method == openmm.NonbondedForce.CutoffNonPeriodic
        self.cutoff_nm = force.getCutoffDistance()._value
        eps_rf = force.getReactionFieldDielectric()
        self.k_rf = (eps_rf - 1) / (2 * eps_rf + 1) / self.cutoff_nm**3 if self.use_cutoff else 0.0
        self.c_rf = 3 * eps_rf / (2 * eps_rf + 1) / self.cutoff_nm if self.use_cutoff else 0.0
        self.use_switch = self.use_cutoff and force.getUseSwitchingFunction()
        self.switch_nm = force.getSwitchingDistance()._value

        params = np.array([[p._value for p in force.getParticleParameters(i)] for i in range(num_atoms)])
        charge, sigma, epsilon = params.T
        is_pair = ~np.eye(num_atoms, dtype=bool)
        exceptions = []
        for k in range(force.getNumExceptions()):
            i, j, qq, sig, eps = force.getExceptionParameters(k)
            is_pair[i, j] = is_pair[j, i] = False
            if qq._value != 0.0 or eps._value != 0.0:
                exceptions.append((i, j, qq._value, sig._value, eps._value))
        # Symmetric matrices, zero on excluded pairs, halved: the energy is their sum over all i, j.
        self.register_buffer("is_pair", torch.as_tensor(is_pair))
        self.register_buffer("qq_kJ_nm", _as_tensor(0.5 * ONE_4PI_EPS0 * np.outer(charge, charge) * is_pair, dtype))
        self.register_buffer("sigma2_nm2", _as_tensor((0.5 * (sigma[:, None] + sigma[None, :])) ** 2, dtype))
        self.register_buffer("four_epsilon_kJ", _as_tensor(2 * np.sqrt(np.outer(epsilon, epsilon)) * is_pair, dtype))
        exc = np.array(exceptions, dtype=np.float64).reshape(-1, 5)
        self.register_buffer("exception_atoms", torch.as_tensor(exc[:, :2].astype(np.int64)))
        self.register_buffer("exception_qq_kJ_nm", _as_tensor(ONE_4PI_EPS0 * exc[:, 2], dtype))
        self.register_buffer("exception_sigma2_nm2", _as_tensor(exc[:, 3] ** 2, dtype))
        self.register_buffer("exception_four_epsilon_kJ", _as_tensor(4 * exc[:, 4], dtype))

    def forward(self, positions_nm: torch.Tensor, pairs: _PairGeometry) -> torch.Tensor:
        lj = _lennard_jones(pairs.inverse_r2, self.sigma2_nm2, self.four_epsilon_kJ)
        if self.use_switch:
            x = torch.clamp((pairs.r - self.switch_nm) / (self.cutoff_nm - self.switch_nm), 0, 1)
            lj = lj * (1 + x**3 * (-10 + x * (15 - 6 * x)))
        coulomb = self.qq_kJ_nm * (pairs.inverse_r + self.k_rf * pairs.r2 - self.c_rf)
        within = self.is_pair & (pairs.r < self.cutoff_nm) if self.use_cutoff else self.is_pair
        pair_energy = torch.where(within, lj + coulomb, 0).sum((-1, -2))

        a = self.exception_atoms
        r_exc_nm = _norm(positions_nm[:, a[:, 1]] - positions_nm[:, a[:, 0]])
        exception_energy = self.exception_qq_kJ_nm / r_exc_nm + _lennard_jones(
            1 / (r_exc_nm * r_exc_nm), self.exception_sigma2_nm2, self.exception_four_epsilon_kJ)
        return pair_energy + exception_energy.sum(-1)


class _OBC1GeneralizedBorn(torch.nn.Module):
    """The CustomGBForce of ``implicit/obc1.xml``: OBC1 Born radii, GB polar energy, ACE surface term."""

    def __init__(self, force: openmm.CustomGBForce, num_atoms: int, dtype):
        super().__init__()
        settings = self._check_and_read(force)
        self.use_cutoff = force.getNonbondedMethod() == openmm.CustomGBForce.CutoffNonPeriodic
        self.cutoff_nm = force.getCutoffDistance()._value
        self.born_offset_nm = settings["born_offset"]
        self.ace_offset_nm = settings.get("ace_offset")
        self.inverse_cutoff_shift = settings.get("inverse_cutoff", 0.0)
        self.gb_prefactor = _GB_COULOMB_KJ_NM * (1 / settings["solute_dielectric"] - 1 / settings["solvent_dielectric"])
        params = np.array([force.getParticleParameters(i) for i in range(num_atoms)], dtype=np.float64)
        self.register_buffer("charge", _as_tensor(params[:, 0], dtype))
        self.register_buffer("offset_radius_nm", _as_tensor(params[:, 1], dtype))
        self.register_buffer("scaled_radius_nm", _as_tensor(params[:, 2], dtype))
        charge_product = -0.5 * self.gb_prefactor * np.outer(params[:, 0], params[:, 0])
        self.register_buffer("charge_product", _as_tensor(charge_product, dtype))
        self.register_buffer("off_diagonal", ~torch.eye(num_atoms, dtype=torch.bool))

    @staticmethod
    def _check_and_read(force: openmm.CustomGBForce) -> dict[str, float]:
        def refuse(what: str):
            raise UnsupportedForceError(f"CustomGBForce {force.getName()!r}: unsupported {what}; "
                                        "only the OBC1 force of implicit/obc1.xml (kappa=0) is implemented")

        if force.getNonbondedMethod() not in (openmm.CustomGBForce.NoCutoff, openmm.CustomGBForce.CutoffNonPeriodic):
            refuse(f"nonbonded method {force.getNonbondedMethod()}")
        names = [force.getPerParticleParameterName(i) for i in range(force.getNumPerParticleParameters())]
        if names != ["charge", "or", "sr"]:
            refuse(f"per-particle parameters {names}")
        if force.getNumGlobalParameters() or force.getNumTabulatedFunctions() or force.getNumExclusions() \
                or force.getNumEnergyParameterDerivatives():
            refuse("global parameters, tabulated functions, exclusions or parameter derivatives")
        computed = [force.getComputedValueParameters(i) for i in range(force.getNumComputedValues())]
        if len(computed) != 2 or computed[0][0] != "I" or computed[1][0] != "B" \
                or computed[0][2] != openmm.CustomGBForce.ParticlePairNoExclusions \
                or computed[1][2] != openmm.CustomGBForce.SingleParticle \
                or _match_expression(_OBC1_I, computed[0][1]) is None:
            refuse(f"computed values {computed}")
        born = _match_expression(_OBC1_B, computed[1][1])
        if born is None:
            refuse(f"Born radius expression {computed[1][1]!r}")
        settings = {"born_offset": born["offset"]}
        found = []
        for k in range(force.getNumEnergyTerms()):
            expression, kind = force.getEnergyTermParameters(k)
            for name, template, wanted_kind in (
                    ("self", _GB_SELF, openmm.CustomGBForce.SingleParticle),
                    ("ace", _GB_ACE, openmm.CustomGBForce.SingleParticle),
                    ("pair", _GB_PAIR_SHIFTED, openmm.CustomGBForce.ParticlePairNoExclusions),
                    ("pair", _GB_PAIR_PLAIN, openmm.CustomGBForce.ParticlePairNoExclusions)):
                values = _match_expression(template, expression)
                if values is not None and kind == wanted_kind and name not in found:
                    break
            else:
                refuse(f"energy term {expression!r} (type {kind})")
            if values["kappa"] != 0.0:
                refuse(f"kappa={values['kappa']} in {expression!r}")
            for key in ("solvent_dielectric", "solute_dielectric"):
                if settings.setdefault(key, values[key]) != values[key]:
                    refuse(f"inconsistent {key} in {expression!r}")
            if name == "ace":
                settings["ace_offset"] = values["offset"]
            if "inverse_cutoff" in values:
                settings["inverse_cutoff"] = values["inverse_cutoff"]
            found.append(name)
        if "self" not in found or "pair" not in found:
            refuse(f"energy terms {found} (need the self and pair GB terms)")
        return settings

    def forward(self, positions_nm: torch.Tensor, pairs: _PairGeometry) -> torch.Tensor:
        r, inv_r = pairs.r, pairs.inverse_r
        or_i = self.offset_radius_nm[:, None]
        sr_j = self.scaled_radius_nm[None, :]
        within = self.off_diagonal & (r < self.cutoff_nm) if self.use_cutoff else self.off_diagonal
        # Born radii: I_i = sum_j I(r_ij, or_i, sr_j), then the OBC1 rescaling.
        upper = r + sr_j
        lower = torch.maximum(or_i, torch.abs(r - sr_j))
        inv_u, inv_l = 1 / upper, 1 / lower
        integral = 0.5 * (inv_l - inv_u + 0.25 * (r - sr_j * sr_j * inv_r) * (inv_u * inv_u - inv_l * inv_l)
                          + 0.5 * torch.log(lower * inv_u) * inv_r)
        integral = torch.where(within & (upper - or_i >= 0), integral, 0).sum(-1)  # [b, N]
        psi = integral * self.offset_radius_nm
        born_radius_nm = 1 / (1 / self.offset_radius_nm - torch.tanh(0.8 * psi + 2.909125 * psi**3)
                              / (self.offset_radius_nm + self.born_offset_nm))
        energy = (-0.5 * self.gb_prefactor * self.charge**2 / born_radius_nm).sum(-1)
        if self.ace_offset_nm is not None:
            radius_nm = self.offset_radius_nm + self.ace_offset_nm
            energy = energy + (28.3919551 * (radius_nm + 0.14) ** 2 * (radius_nm / born_radius_nm) ** 6).sum(-1)
        # Polar pair energy over i < j: half the symmetric sum (the -0.5 * prefactor is in charge_product).
        bb = born_radius_nm[:, :, None] * born_radius_nm[:, None, :]
        f = torch.sqrt(pairs.r2 + bb * torch.exp(-pairs.r2 / (4 * bb)))
        pair = torch.where(within, self.charge_product * (1 / f - self.inverse_cutoff_shift), 0).sum((-1, -2))
        return energy + pair


# --------------------------------------------------------------------------------------------- module
class TorchEnergy(torch.nn.Module):
    """Potential energy of ``system`` for a batch of positions ``[B, N, 3]`` nm; kT at ``temperature_K``."""

    def __init__(self, system: openmm.System, temperature_K: float, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None, chunk_size: int | None = None,
                 compile: bool = False):
        """``compile=True`` fuses the energy (and its autograd) with ``torch.compile``: several times faster,
        a one-off compilation of ~10-30 s per dtype, device and grad mode; chunks are padded to ``chunk_size``."""
        super().__init__()
        self.num_atoms = system.getNumParticles()
        self.kT_kJ_per_mol = kT_kJ_per_mol(temperature_K)
        self.dtype = dtype
        default_chunk = PAIR_ELEMENTS_PER_CHUNK["compiled" if compile else "eager"] // self.num_atoms**2
        self.chunk_size = int(chunk_size or max(1, default_chunk))
        if system.usesPeriodicBoundaryConditions():
            raise UnsupportedForceError("periodic systems are not supported")
        terms, names = [], []
        for force in system.getForces():
            kind = type(force).__name__
            if isinstance(force, openmm.CMMotionRemover):
                continue
            if isinstance(force, openmm.HarmonicBondForce):
                terms.append(_HarmonicBonds(force, dtype))
            elif isinstance(force, openmm.HarmonicAngleForce):
                terms.append(_HarmonicAngles(force, dtype))
            elif isinstance(force, openmm.PeriodicTorsionForce):
                terms.append(_PeriodicTorsions(force, dtype))
            elif isinstance(force, openmm.NonbondedForce):
                terms.append(_Nonbonded(force, self.num_atoms, dtype))
            elif isinstance(force, openmm.CustomGBForce):
                terms.append(_OBC1GeneralizedBorn(force, self.num_atoms, dtype))
            else:
                raise UnsupportedForceError(f"unsupported force {kind} ({force.getName()!r}) in the System")
            names.append(force.getName() if force.getName() not in names else f"{force.getName()}_{len(names)}")
        self.terms = torch.nn.ModuleList(terms)
        self.term_names = names
        self.register_buffer("_diagonal", torch.eye(self.num_atoms, dtype=dtype))
        self.to(device=device)
        self.compiled = compile
        self._total_kJ = self._eager_total_kJ
        if compile:
            # dynamo caches per code object: every instance (system, dtype, device, grad mode) is one entry
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            self._total_kJ = torch.compile(self._eager_total_kJ, dynamic=False)

    @classmethod
    def from_sequence(cls, sequence: str, temperature_K: float, **kwargs) -> TorchEnergy:
        from proseflow.physics.structures import build_peptide
        from proseflow.physics.system import create_system

        topology, _ = build_peptide(sequence, minimize=False)
        return cls(create_system(topology), temperature_K, **kwargs)

    @property
    def device(self) -> torch.device:
        return self._diagonal.device

    # ---- evaluation
    def _check(self, positions_nm) -> torch.Tensor:
        x = torch.as_tensor(positions_nm)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (self.num_atoms, 3):
            raise ValueError(f"positions must be [B, {self.num_atoms}, 3] nm, got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("positions contain NaN or inf")
        return x.to(device=self.device, dtype=self.dtype)

    def _terms_kJ(self, x: torch.Tensor) -> list[torch.Tensor]:
        pairs = _PairGeometry(x, self._diagonal)
        return [term(x, pairs) for term in self.terms]

    def _eager_total_kJ(self, x: torch.Tensor) -> torch.Tensor:
        return sum(self._terms_kJ(x))

    def _chunked_total_kJ(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Total energies chunk by chunk; with ``compile`` every chunk is padded to one fixed shape."""
        energies = []
        for chunk in x.split(self.chunk_size):
            n = chunk.shape[0]
            if self.compiled and n < self.chunk_size:
                chunk = torch.cat([chunk, chunk[-1:].detach().expand(self.chunk_size - n, -1, -1)])
            energies.append(self._total_kJ(chunk)[:n])
        return energies

    @staticmethod
    def _finite_or_inf(energy: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.isnan(energy) | (energy == -math.inf), math.inf, energy)

    def energy_kJ(self, positions_nm) -> torch.Tensor:
        """``[B]`` total energy in kJ/mol (differentiable)."""
        x = self._check(positions_nm)
        return self._finite_or_inf(torch.cat(self._chunked_total_kJ(x)))

    def energy_kT(self, positions_nm) -> torch.Tensor:
        """``[B]`` reduced energy u(x) = E(x) / kT (differentiable)."""
        return self.energy_kJ(positions_nm) / self.kT_kJ_per_mol

    forward = energy_kT

    def energy_terms_kJ(self, positions_nm) -> dict[str, torch.Tensor]:
        """Per-force energies in kJ/mol, keyed by the force names (e.g. ``NonbondedForce``)."""
        x = self._check(positions_nm)
        per_chunk = [self._terms_kJ(c) for c in x.split(self.chunk_size)]
        return {name: self._finite_or_inf(torch.cat([terms[k] for terms in per_chunk]))
                for k, name in enumerate(self.term_names)}

    def energy_and_forces_kT(self, positions_nm) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B], [B, N, 3])``: u(x) in kT and forces -du/dx in kT/nm, by autograd (detached results)."""
        x = self._check(positions_nm)
        energies, forces = [], []
        for chunk in x.split(self.chunk_size):
            with torch.enable_grad():
                chunk = chunk.detach().requires_grad_(True)
                (energy,) = self._chunked_total_kJ(chunk)
                energy = energy / self.kT_kJ_per_mol
                (gradient,) = torch.autograd.grad(energy.sum(), chunk)
            energy = self._finite_or_inf(energy.detach())
            ok = torch.isfinite(energy)[:, None, None] & torch.isfinite(gradient)
            energies.append(energy)
            forces.append(torch.where(ok, -gradient, 0))
        return torch.cat(energies), torch.cat(forces)

    def energy_kT_numpy(self, positions_nm: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.energy_kT(np.asarray(positions_nm)).cpu().numpy().astype(np.float64)

    def energy_and_forces_kT_numpy(self, positions_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        energy, forces = self.energy_and_forces_kT(np.asarray(positions_nm))
        return energy.cpu().numpy().astype(np.float64), forces.cpu().numpy().astype(np.float64)


class TorchEnergyAPI:
    """``proseflow.physics.energy`` backend ``torch``: numpy in/out, same contract as ``OpenMMEnergy``.

    ``system_or_sequence`` is an OpenMM System, a Topology or a sequence; ``dtype`` a torch dtype or its name.
    Energies above ``MAX_FINITE_ENERGY_KJ_PER_MOL`` (or NaN) are +inf with zero forces, as in ``OpenMMEnergy``.
    """

    backend = "torch"

    def __init__(self, system_or_sequence, temperature_K: float, dtype: torch.dtype | str = torch.float64,
                 device: torch.device | str | None = None, chunk_size: int | None = None, compile: bool = False):
        from proseflow.physics.structures import topology_of
        from proseflow.physics.system import create_system

        if isinstance(system_or_sequence, openmm.System):
            system = system_or_sequence
        else:
            system = create_system(topology_of(system_or_sequence))
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = TorchEnergy(system, temperature_K, dtype=dtype, device=device, chunk_size=chunk_size,
                                 compile=compile)
        self.temperature_K = float(temperature_K)
        self.kT = self.model.kT_kJ_per_mol
        self.n_atoms = self.model.num_atoms

    def _cap(self, energy_kT: np.ndarray) -> np.ndarray:
        return np.where(energy_kT * self.kT > MAX_FINITE_ENERGY_KJ_PER_MOL, np.inf, energy_kT)

    def energy_kT(self, positions_nm: np.ndarray) -> np.ndarray:
        return self._cap(self.model.energy_kT_numpy(positions_nm))

    def energy_and_forces_kT(self, positions_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        energy, forces = self.model.energy_and_forces_kT_numpy(positions_nm)
        energy = self._cap(energy)
        forces[~np.isfinite(energy)] = 0.0
        return energy, forces

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
