"""What every runner gets: the rule's named files (:class:`Files`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class Files:
    """A rule's named files: ``files.one("md")`` for a single path, ``files.many("evals")`` for a list."""

    def __init__(self, kind: str, named: Mapping[str, Sequence[str]]):
        self.kind = kind
        self.named = {k: [str(p) for p in v] for k, v in named.items()}

    def _get(self, name: str) -> list[str]:
        try:
            return self.named[name]
        except KeyError:
            raise ValueError(f"missing {self.kind} {name!r} (given: {', '.join(sorted(self.named)) or 'none'})") from None

    def one(self, name: str) -> str:
        paths = self._get(name)
        if len(paths) != 1:
            raise ValueError(f"{self.kind} {name!r} must be one path, got {len(paths)}")
        return paths[0]

    def many(self, name: str, default: list[str] | None = None) -> list[str]:
        if default is not None and name not in self.named:
            return default
        return self._get(name)

    def optional(self, name: str) -> str | None:
        return self.one(name) if name in self.named else None
