"""The dispatcher: ``python -m proseflow run <stage>`` (:mod:`proseflow.cli`) runs one registered stage.

The stages themselves are declared in the modules of this package, one per family (``physics``, ``training``,
``sampling``, ``evaluation``; any further module registers its own): each stage's settings, their builder from
the config and its runner ``run_<stage>(settings, inputs, outputs)`` side by side, registered once with
:func:`proseflow.stages.settings.register`. A runner imports the library inside the function, so running one
stage imports only what it needs (the MD stage loads neither torch nor matplotlib); ``tests/test_env_guard.py``
checks every stage against the conda env of the rules that run it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from proseflow.stages import settings as S
from proseflow.stages._files import Files

log = logging.getLogger("proseflow")


# stage name -> (settings stage, runner): the registry's view for the entry point and the env tests
STAGES: dict[str, tuple[str, Callable]] = {n: (st.settings.stage, st.run) for n, st in S.REGISTRY.items()}
THREADED = {n for n, st in S.REGISTRY.items() if st.threaded}  # stages that take the job's thread count


def run(stage: str, settings_json: str, inputs: Mapping[str, Sequence[str]], outputs: Mapping[str, Sequence[str]],
        threads: int | None = None) -> None:
    """Run ``stage`` with its settings (JSON) on the named files."""
    try:
        settings_stage, runner = STAGES[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r} (known: {', '.join(sorted(STAGES))})") from None
    s = S.from_json(settings_stage, settings_json)
    kwargs = {"threads": threads} if stage in THREADED else {}
    runner(s, Files("input", inputs), Files("output", outputs), **kwargs)
