"""The pipeline's stages: their settings (stdlib + PyYAML only) and the entry point that runs them.

Each stage is declared once, in the module of its family (``physics``, ``training``, ``sampling``,
``evaluation``), side by side: its settings (a dataclass that travels as JSON), the builder of those settings
from the config (standard library only: the workflow runs it when the DAG is built), and its runner (which imports
the library inside the function, so a stage loads only what it needs), registered with
:func:`proseflow.stages.settings.register`.
"""
