"""Name -> attack registry, with what each attack needs to know."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .alie import alie
from .backdoor import alie_backdoor
from .channel import bit_flip, gambler
from .defence_aware import alie_opt, ipm_opt
from .fang import fang, fang_selection
from .ipm import ipm
from .lp_coordinate import lp_coordinate
from .mimic import mimic
from .minmax import minmax, minsum
from .noise import gaussian, label_flip, omniscient_negative, sign_flip

NEEDS = ("omniscient", "own", "none", "channel")
#: what an attack with its options needs each round (``Attack.knowledge``): NEEDS, and
#: "colluders" for the colluders' own honest vectors only
KNOWLEDGE = ("none", "own", "colluders", "omniscient", "channel")


#: parameters of the attack functions that the caller (the attack's role) supplies, not the user
SUPPLIED = frozenset(
    {"gar", "gar_options", "pre", "generator", "return_gamma", "return_mask", "trigger_value"}
    | {"index", "spread", "num_vectors"}
)


@dataclass(frozen=True)
class Attack:
    """An attack and its threat model.

    ``needs``: "omniscient" (the honest vectors of the round, gathered by a coordinator), "own"
    (the client's own vector or data), "none" (nothing) or "channel" (applied to the received
    ``(n, d)`` tensor, not by a client). ``colluders_only_ok``: the attack may also run on the
    colluders' own honest vectors only (non-omniscient ALIE and its backdoor), chosen by its
    ``omniscient`` option, whose default is ``omniscient_default``. ``same_for_all``: every
    colluder sends the same vector, a function of n, f and the vectors it may know only, so the
    adversary may compute it once per round.

    The options a user may set (:attr:`options`) are the function's parameters after its first
    ``inputs`` (what the role passes in), less :data:`SUPPLIED`, under the user-facing names of
    ``renamed`` (function name -> option name), plus the role's own ``extra`` options (and
    ``omniscient`` where ``colluders_only_ok``).
    """

    name: str
    fn: Callable[..., Any]
    needs: str
    colluders_only_ok: bool = False
    omniscient_default: bool = True
    same_for_all: bool = False
    inputs: int = 3
    extra: tuple[str, ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def knowledge(self, options: Mapping[str, Any] | None = None) -> str:
        """What the attack with ``options`` knows each round (one of ``KNOWLEDGE``): the threat
        model, decided here once for the ClientApp, the adversary grid and the server."""
        if not self.colluders_only_ok:
            return self.needs
        omniscient = bool((options or {}).get("omniscient", self.omniscient_default))
        return "omniscient" if omniscient else "colluders"

    def _parameters(self) -> list[inspect.Parameter]:
        params = list(inspect.signature(self.fn).parameters.values())[self.inputs :]
        named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return [p for p in params if p.kind in named and p.name not in SUPPLIED]

    @property
    def options(self) -> frozenset[str]:
        """The options a user may set for this attack (see the class docstring)."""
        rename = dict(self.renamed)
        return frozenset(rename.get(p.name, p.name) for p in self._parameters()) | set(
            self._role_options
        )

    @property
    def _role_options(self) -> tuple[str, ...]:
        """The options the role reads itself: ``extra``, and ``omniscient`` where it chooses."""
        return self.extra + (("omniscient",) if self.colluders_only_ok else ())

    def default(self, option: str) -> Any:
        """The default of a function option, read from the function's signature (its one place)."""
        rename = {user: fn for fn, user in self.renamed}
        for p in self._parameters():
            if p.name == rename.get(option, option) and p.default is not p.empty:
                return p.default
        raise KeyError(f"attack {self.name!r} has no default for option {option!r}")

    def function_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The user's ``options`` that go to the function (the role's ``extra`` ones left out),
        under the function's names: only what the user set, so defaults stay in the signature."""
        rename = {user: fn for fn, user in self.renamed}
        return {rename.get(k, k): v for k, v in options.items() if k not in self._role_options}

    def check_options(self, options: Mapping[str, Any]) -> None:
        """ValueError naming the options the attack does not take, and those it takes."""
        unknown = set(options) - self.options
        if unknown:
            raise ValueError(
                f"attack {self.name!r} does not take option(s) {sorted(unknown)}; "
                f"it takes {sorted(self.options) or 'none'}"
            )


_LP_SEARCH = ("initial_gamma", "max_doublings", "max_bisections", "rtol")  # its **search
_ATTACKS = (
    Attack("alie", alie, "omniscient", colluders_only_ok=True, same_for_all=True),
    Attack("ipm", ipm, "omniscient", same_for_all=True),
    Attack("lp_coordinate", lp_coordinate, "omniscient", same_for_all=True, extra=_LP_SEARCH),
    Attack("gaussian", gaussian, "none"),
    Attack("omniscient_negative", omniscient_negative, "omniscient", same_for_all=True),
    Attack("sign_flip", sign_flip, "own", inputs=1),
    Attack("label_flip", label_flip, "own", inputs=2),
    Attack("bit_flip", bit_flip, "channel", inputs=2),
    Attack("gambler", gambler, "channel", inputs=1),
    Attack(
        "alie_backdoor",
        alie_backdoor,
        "omniscient",
        colluders_only_ok=True,
        omniscient_default=False,
        extra=("samples",),
        renamed=(("learning_rate", "lr"),),
    ),
)
REGISTRY: dict[str, Attack] = {attack.name: attack for attack in _ATTACKS}
NAMES: tuple[str, ...] = tuple(REGISTRY)
OMNISCIENT: frozenset[str] = frozenset(a.name for a in _ATTACKS if a.needs == "omniscient")
CHANNEL: frozenset[str] = frozenset(a.name for a in _ATTACKS if a.needs == "channel")

# Attacks beyond the seed papers (ALGORITHMS.md, "Beyond the seeds"): kept out of NAMES and
# OMNISCIENT, whose contents the clients and tests rely on; ``get`` finds them too. All are
# omniscient; fang_selection, alie_opt and ipm_opt also know the deployed rule (and chain).
_BEYOND_ATTACKS = (
    Attack("mimic", mimic, "omniscient", same_for_all=True, extra=("warmup",)),
    Attack("minmax", minmax, "omniscient", same_for_all=True),
    Attack("minsum", minsum, "omniscient", same_for_all=True),
    Attack("fang", fang, "omniscient"),
    Attack("fang_selection", fang_selection, "omniscient", same_for_all=True),
    Attack("alie_opt", alie_opt, "omniscient", same_for_all=True),
    Attack("ipm_opt", ipm_opt, "omniscient", same_for_all=True),
)
BEYOND_REGISTRY: dict[str, Attack] = {attack.name: attack for attack in _BEYOND_ATTACKS}
BEYOND_NAMES: tuple[str, ...] = tuple(BEYOND_REGISTRY)
BEYOND_OMNISCIENT: frozenset[str] = frozenset(
    a.name for a in _BEYOND_ATTACKS if a.needs == "omniscient"
)


def knowledge(name: str, options: Mapping[str, Any] | None = None) -> str:
    """What attack ``name`` (with its ``options``) knows each round; "none" for no attack."""
    return "none" if name == "none" else get(name).knowledge(options)


def same_for_all(name: str, options: Mapping[str, Any] | None = None) -> bool:
    """Whether every colluder of attack ``name`` sends the same vector (False for no attack)."""
    return name != "none" and get(name).same_for_all


def get(name: str) -> Attack:
    """The ``Attack`` registered under ``name``; unknown names raise ``ValueError`` listing all."""
    try:
        return REGISTRY[name] if name in REGISTRY else BEYOND_REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(NAMES + BEYOND_NAMES)
        raise ValueError(f"unknown attack {name!r}; known attacks: {known}") from None
