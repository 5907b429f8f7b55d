"""Errors and the support report."""
from __future__ import annotations

from dataclasses import dataclass, field


class UnsupportedModelError(ValueError):
    """The model uses an operation outside the path-lifting model (docs/design.md, "The model class").

    ``unsupported`` lists every offending ``(op, module path)`` pair found in the model.
    """

    def __init__(self, message: str, unsupported=()):
        super().__init__(message)
        self.unsupported = list(unsupported)


class ModelCaptureError(ValueError):
    """The model could not be run on the example inputs (wrong shape, failing forward, ...)."""


@dataclass
class SupportReport:
    """Result of :func:`pathmetric.check_support`.

    ``ok`` is True when every operation is inside the path-lifting model; ``unsupported`` lists
    ``(op, module path, reason)`` triples; ``ops`` counts the supported operations by rule name;
    ``head`` is 'softmax' or 'log_softmax' when a final softmax head was set aside (the analysed
    function is then the logits), and ``notes`` says what was set aside and why.
    """

    unsupported: list = field(default_factory=list)
    ops: dict = field(default_factory=dict)
    head: str | None = None
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unsupported

    def __str__(self) -> str:
        if self.ok:
            used = ", ".join(f"{name} x{count}" for name, count in sorted(self.ops.items()))
            return f"supported ({used})" + "".join(f"\nnote: {n}" for n in self.notes)
        lines = [f"{len(self.unsupported)} unsupported operation(s):"]
        lines += [f"  {op} in '{path or '<model>'}': {why}" for op, path, why in self.unsupported]
        return "\n".join(lines)
