"""`DeltaConfig`: what to convert and which students to offer, as one dataclass (torchao style)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Union

from torch import nn

#: what a student learns on the frames between keyframes (see `DeltaConfig.objective`)
OBJECTIVES = ("delta", "features")

TargetSpec = Union[
    None,
    type,
    str,
    Callable[[str, nn.Module], bool],
    Sequence[Union[type, str]],
]


@dataclass
class DeltaConfig:
    """How to turn a per-frame network into a delta-distilled one.

    student: ``"search"`` lets a per-layer Gumbel gate choose among ``candidates``; any other
        registered student name (``"compressed"``, ``"full"``, ...) uses that student everywhere.
    reduction: channel reduction gamma of the compressed student's bottleneck.
    policy: bottleneck width ``min(Cin, Cout) / gamma`` (``"min"``) or ``Cout / gamma`` (``"out"``).
    targets: which layers to convert. ``None`` means every ``nn.Conv2d`` except the model's first
        and last; otherwise a type, a name regex, a sequence of those, or ``fn(name, module) -> bool``.
        A layer named exactly that cannot be converted raises an error; others are skipped with a reason.
    candidates: the students the gate chooses between when ``student == "search"``.
    prefer, gate_init: the gate starts with logit ``gate_init`` on ``prefer`` (if a candidate) and 0
        elsewhere, so a short search starts from the paper's SVD student rather than a tie.
    objective: ``"delta"`` (the paper's method): a delta frame computes ``z_t = z_k + g(x_t - x_k)``
        and the student learns the output's change. ``"features"``: the paper's baseline, feature
        distillation: ``z_t = g(x_t) + b`` (``b`` the teacher's bias), the student learns the output
        itself from the input itself. Same students, gates and budget; only what ``g`` sees and
        predicts differs. Students with nothing to train (``zero``, the ``sparse`` kinds) have no
        feature form and are refused at conversion.
    """

    student: str = "search"
    reduction: int = 4
    policy: Literal["min", "out"] = "min"
    targets: TargetSpec = None
    candidates: tuple[str, ...] = ("compressed", "full")
    prefer: str | None = "compressed"
    gate_init: float = 1.0
    tau: float = 1.0
    objective: str = "delta"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Checks what the config alone can tell. Student names are checked against the registry
        when a model is converted (`students.check_names`): the config does not import the registry,
        which imports the config."""
        if self.reduction < 1:
            raise ValueError(f"DeltaConfig.reduction must be >= 1, got {self.reduction}")
        if self.policy not in ("min", "out"):
            raise ValueError(f"DeltaConfig.policy must be 'min' or 'out', got {self.policy!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"DeltaConfig.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.student == "search" and len(self.candidates) < 2:
            raise ValueError("student='search' needs at least two candidates")
        self.candidates = tuple(self.candidates)

    @property
    def student_names(self) -> tuple[str, ...]:
        """The students each converted layer holds."""
        return self.candidates if self.student == "search" else (self.student,)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form; callable or type targets are stored by description only."""
        d = asdict(self)
        d["candidates"] = list(self.candidates)
        t = self.targets
        if t is None or isinstance(t, str):
            d["targets"] = t
        elif isinstance(t, type):
            d["targets"] = {"type": t.__name__}
        elif isinstance(t, Sequence) and all(isinstance(x, str) for x in t):
            d["targets"] = list(t)
        else:
            d["targets"] = {"repr": repr(t)}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DeltaConfig:
        d = dict(d)
        d["candidates"] = tuple(d.get("candidates", ("compressed", "full")))
        if isinstance(d.get("targets"), dict):
            d["targets"] = None  # conversion is replayed from the stored layer list instead
        return cls(**d)


def match_target(spec: TargetSpec, name: str, module: nn.Module) -> bool:
    """True if ``module`` (called ``name`` in the model) is selected by ``spec``."""
    if spec is None:
        return isinstance(module, nn.Conv2d)
    if isinstance(spec, type):
        return isinstance(module, spec)
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    if callable(spec):
        return bool(spec(name, module))
    return any(match_target(s, name, module) for s in spec)


def explicitly_named(spec: TargetSpec, name: str, module: nn.Module) -> bool:
    """True if the user asked for this exact layer by its exact name.

    Such a layer must be converted or rejected loudly; a layer merely caught by a type, a broad
    pattern or a callable is skipped with a reason instead.
    """
    if isinstance(spec, str):
        return spec == name
    if isinstance(spec, Sequence):
        return any(isinstance(s, str) and s == name for s in spec)
    return False
