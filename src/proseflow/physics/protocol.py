"""The MD protocol (PAPER.md section 1) as a plain value: standard library only, so the settings layer
that builds the DAG can use it without OpenMM."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


def as_steps(time_ps: float, timestep_fs: float, name: str, allow_zero: bool = False) -> int:
    steps = time_ps * 1000.0 / timestep_fs
    if abs(steps - round(steps)) > 1e-6 or (round(steps) < 1 and not allow_zero):
        raise ValueError(f"{name}={time_ps} ps is not a whole positive number of {timestep_fs} fs steps")
    return int(round(steps))


@dataclass(frozen=True)
class MDProtocol:
    """The MD protocol of PAPER.md section 1. Times in ps, temperature in K."""

    temperature_K: float = 310.0
    friction_per_ps: float = 0.3
    timestep_fs: float = 1.0
    burn_in_ps: float = 50.0
    length_ps: float = 200_000.0
    save_interval_ps: float = 1.0
    seed: int = 0
    minimize: bool = True
    platform: str = "auto"
    checkpoint_interval_s: float = 300.0
    recentre_interval_ps: float = 0.5
    replicas: int = 1  # independent runs of each system (copies in the same context), concatenated
    # backbone (phi, psi) start states in degrees: replica k of every system starts with each phi and psi set to
    # state k mod len (then minimised); () = every replica from the built structure. Training data that covers
    # the minor basins (a flow's geometry there is only as good as its frames there); never for a reference.
    start_phi_psi_deg: tuple = ()

    def __post_init__(self) -> None:
        if int(self.replicas) != self.replicas or self.replicas < 1:
            raise ValueError(f"replicas must be a positive integer, got {self.replicas!r}")
        states = []
        for state in self.start_phi_psi_deg:
            try:
                phi, psi = (float(v) for v in state)
            except (TypeError, ValueError):
                raise ValueError(f"start_phi_psi_deg: each state is [phi, psi] in degrees, got {list(state) if isinstance(state, list | tuple) else state!r}") from None
            if not (-180.0 <= phi <= 180.0 and -180.0 <= psi <= 180.0):
                raise ValueError(f"start_phi_psi_deg: [{phi:g}, {psi:g}] is outside [-180, 180] degrees")
            states.append((phi, psi))
        if len(states) > self.replicas:
            raise ValueError(f"start_phi_psi_deg has {len(states)} states but replicas is {self.replicas}: replica k "
                             f"starts in state k mod {len(states)}, so set replicas to at least {len(states)}")
        object.__setattr__(self, "start_phi_psi_deg", tuple(states))  # lists from JSON or YAML -> tuples

    def differences(self, stored: dict, ignore: tuple[str, ...] = ()) -> dict[str, tuple]:
        """{field: (stored value, this protocol's value)} for each field of this protocol that `stored` (the
        protocol dict read back from a trajectory file, JSON) holds differently or lacks; fields in `ignore`
        are skipped. Both sides are compared as JSON, where tuples are lists."""
        mine = json.loads(json.dumps({k: v for k, v in asdict(self).items() if k not in ignore}))
        theirs = json.loads(json.dumps(stored))
        return {k: (theirs.get(k, "<absent>"), v) for k, v in mine.items() if theirs.get(k, "<absent>") != v}

    @property
    def steps_per_frame(self) -> int:
        return as_steps(self.save_interval_ps, self.timestep_fs, "save_interval_ps")

    @property
    def n_frames(self) -> int:
        n = self.length_ps / self.save_interval_ps
        if abs(n - round(n)) > 1e-9 or round(n) < 1:
            raise ValueError(f"length_ps {self.length_ps} is not a positive multiple of save_interval_ps "
                             f"{self.save_interval_ps}")
        return int(round(n))

    @property
    def burn_in_steps(self) -> int:
        return as_steps(self.burn_in_ps, self.timestep_fs, "burn_in_ps", allow_zero=True)

    @property
    def chunk_steps(self) -> int:
        """Steps per integration chunk: the largest divisor of a frame's steps within the recentre interval."""
        limit = max(1, int(self.recentre_interval_ps * 1000 / self.timestep_fs))
        n = self.steps_per_frame
        return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)
