"""Name -> attack registry, with what each attack needs to know."""

from __future__ import annotations

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


@dataclass(frozen=True)
class Attack:
    """An attack and its threat model.

    ``needs``: "omniscient" (the honest vectors of the round, gathered by a coordinator), "own"
    (the client's own vector or data), "none" (nothing) or "channel" (applied to the received
    ``(n, d)`` tensor, not by a client). ``colluders_only_ok``: the attack may also run on the
    colluders' own honest vectors only (non-omniscient ALIE and its backdoor), chosen by its
    ``omniscient`` option, whose default is ``omniscient_default``.
    """

    name: str
    fn: Callable[..., Any]
    needs: str
    colluders_only_ok: bool = False
    omniscient_default: bool = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def knowledge(self, options: Mapping[str, Any] | None = None) -> str:
        """What the attack with ``options`` knows each round (one of ``KNOWLEDGE``): the threat
        model, decided here once for the ClientApp, the adversary grid and the server."""
        if not self.colluders_only_ok:
            return self.needs
        omniscient = bool((options or {}).get("omniscient", self.omniscient_default))
        return "omniscient" if omniscient else "colluders"


_ATTACKS = (
    Attack("alie", alie, "omniscient", colluders_only_ok=True),
    Attack("ipm", ipm, "omniscient"),
    Attack("lp_coordinate", lp_coordinate, "omniscient"),
    Attack("gaussian", gaussian, "none"),
    Attack("omniscient_negative", omniscient_negative, "omniscient"),
    Attack("sign_flip", sign_flip, "own"),
    Attack("label_flip", label_flip, "own"),
    Attack("bit_flip", bit_flip, "channel"),
    Attack("gambler", gambler, "channel"),
    Attack("alie_backdoor", alie_backdoor, "omniscient", True, omniscient_default=False),
)
REGISTRY: dict[str, Attack] = {attack.name: attack for attack in _ATTACKS}
NAMES: tuple[str, ...] = tuple(REGISTRY)
OMNISCIENT: frozenset[str] = frozenset(a.name for a in _ATTACKS if a.needs == "omniscient")
CHANNEL: frozenset[str] = frozenset(a.name for a in _ATTACKS if a.needs == "channel")

# Attacks beyond the seed papers (ALGORITHMS.md, "Beyond the seeds"): kept out of NAMES and
# OMNISCIENT, whose contents the clients and tests rely on; ``get`` finds them too. All are
# omniscient; fang_selection, alie_opt and ipm_opt also know the deployed rule (and chain).
_BEYOND_ATTACKS = (
    Attack("mimic", mimic, "omniscient"),
    Attack("minmax", minmax, "omniscient"),
    Attack("minsum", minsum, "omniscient"),
    Attack("fang", fang, "omniscient"),
    Attack("fang_selection", fang_selection, "omniscient"),
    Attack("alie_opt", alie_opt, "omniscient"),
    Attack("ipm_opt", ipm_opt, "omniscient"),
)
BEYOND_REGISTRY: dict[str, Attack] = {attack.name: attack for attack in _BEYOND_ATTACKS}
BEYOND_NAMES: tuple[str, ...] = tuple(BEYOND_REGISTRY)
BEYOND_OMNISCIENT: frozenset[str] = frozenset(
    a.name for a in _BEYOND_ATTACKS if a.needs == "omniscient"
)


def knowledge(name: str, options: Mapping[str, Any] | None = None) -> str:
    """What attack ``name`` (with its ``options``) knows each round; "none" for no attack."""
    return "none" if name == "none" else get(name).knowledge(options)


def get(name: str) -> Attack:
    """The ``Attack`` registered under ``name``; unknown names raise ``ValueError`` listing all."""
    try:
        return REGISTRY[name] if name in REGISTRY else BEYOND_REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(NAMES + BEYOND_NAMES)
        raise ValueError(f"unknown attack {name!r}; known attacks: {known}") from None
