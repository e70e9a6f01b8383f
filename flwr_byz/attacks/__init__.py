"""Attack vectors as pure functions of what the attacker knows (see ALGORITHMS.md, "Attacks")."""

from .alie import alie, z_max
from .backdoor import (
    BACKDOOR_TARGET,
    add_backdoor_trigger,
    alie_backdoor,
    alie_backdoor_clip,
    alie_backdoor_train_step,
    backdoor_loss,
)
from .channel import bit_flip, gambler, shard_bounds
from .defence_aware import alie_opt, ipm_opt
from .fang import fang, fang_selection
from .ipm import ipm
from .lp_coordinate import lp_coordinate, lp_coordinate_gamma
from .mimic import mimic, mimic_index, mimic_step
from .minmax import minmax, minmax_gamma, minsum, minsum_gamma
from .noise import gaussian, label_flip, omniscient_negative, sign_flip
from .registry import (
    BEYOND_NAMES,
    BEYOND_OMNISCIENT,
    CHANNEL,
    KNOWLEDGE,
    NAMES,
    OMNISCIENT,
    Attack,
    get,
    knowledge,
    same_for_all,
)

__all__ = [
    "KNOWLEDGE",
    "knowledge",
    "same_for_all",
    "BACKDOOR_TARGET",
    "BEYOND_NAMES",
    "BEYOND_OMNISCIENT",
    "alie_opt",
    "fang",
    "fang_selection",
    "ipm_opt",
    "mimic",
    "mimic_index",
    "mimic_step",
    "minmax",
    "minmax_gamma",
    "minsum",
    "minsum_gamma",
    "CHANNEL",
    "NAMES",
    "OMNISCIENT",
    "Attack",
    "add_backdoor_trigger",
    "alie",
    "alie_backdoor",
    "alie_backdoor_clip",
    "alie_backdoor_train_step",
    "backdoor_loss",
    "bit_flip",
    "gambler",
    "gaussian",
    "get",
    "ipm",
    "label_flip",
    "lp_coordinate",
    "lp_coordinate_gamma",
    "omniscient_negative",
    "shard_bounds",
    "sign_flip",
    "z_max",
]
