"""Malicious clients: one class per attack of ALGORITHMS.md, each a thin adapter that gathers what
its threat model lets it know and calls the pure attack function of ``flwr_byz.attacks``.

``knowledge`` says what a class needs before it can answer:
- ``"none"``: nothing (gaussian);
- ``"own"``: its own honest vector or data (sign flip, label flip, the channel faults as a sender);
- ``"colluders"``: the colluders' own honest vectors of the round (non-omniscient ALIE, backdoor);
- ``"omniscient"``: all honest vectors of the round (ALIE, IPM, l_p, omniscient negative).
The app (``flwr_byz.clients.app``) fetches ``colluders``/``omniscient`` vectors from the
coordinator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from flwr.app import Context
from torch import Tensor, nn

from flwr_byz import attacks
from flwr_byz.layout import is_aggregated, state_dim
from flwr_byz.schema import ClientConfig, pre_steps

from .honest import LocalResult, honest_update
from .runtime import client_device, dataset_for, model_with_state, shard_indices

KNOWLEDGE = ("none", "own", "colluders", "omniscient")
SHARED_VECTOR_KEY = "byz-attack"  # ArrayRecord of a Byzantine train message: the round's vector
SHARED_VECTOR_ARRAY = "vector"  # its one array, the flat float32 attack vector
SHARED_ERROR_KEY = "byz-attack-error"  # config key: why the adversary could not compute it
EAVESDROP_KEY = "byz-eavesdrop"  # config key of honest messages: False = the grid reads replies
# defaults of the options the roles read themselves (the attack functions' own are in their
# signatures): the gambler's shard count, the backdoor's triggered images, mimic's warm-up rounds
GAMBLER_SHARDS = 10
SPEC_MAX_COUNT = 1 << 20  # the largest n or f an attack spec may name
BACKDOOR_SAMPLES = 1000
MIMIC_WARMUP = 1


def attack_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded by hashing ``parts`` (stable across processes and runs)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@dataclass
class AttackInputs:
    """What a malicious client may use in one round.

    ``known``: ``(k, d)`` honest vectors from the coordinator (None unless ``knowledge`` is
    ``colluders``/``omniscient``), ordered by partition id; ``own``: its own honest result (None
    unless needed); ``n``: vectors expected in the round; ``f``: attackers in the round."""

    cfg: ClientConfig
    context: Context
    state: dict[str, Tensor]
    rnd: int
    learning_rate: float
    n: int
    f: int
    known: Tensor | None = None
    own: LocalResult | None = None

    def generator(self, *extra: object) -> torch.Generator:
        """Generator for (seed, partition, round, extra): reproducible per node and round."""
        return attack_generator(self.cfg.seed, self.cfg.partition_id, self.rnd, *extra)


class MaliciousClient:
    """Base class: ``submit`` returns the ``(d,)`` vector sent in place of the honest one."""

    name: ClassVar[str] = ""
    #: the registry's entry (``flwr_byz.attacks``): options, threat model, same-for-all
    attack: ClassVar[attacks.Attack]
    allowed_options: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.attack = attacks.get(cls.name)
        cls.allowed_options = cls.attack.options

    def __init__(self, cfg: ClientConfig) -> None:
        self.attack.check_options(cfg.attack_options)
        self.cfg = cfg
        self.options: dict[str, Any] = dict(cfg.attack_options)

    @property
    def needs(self) -> str:
        """What the client must know this round: one of ``KNOWLEDGE`` (the registry's threat
        model; a channel fault's sender role knows its own vector)."""
        knows = self.attack.knowledge(self.options)
        return "own" if knows == "channel" else knows

    def function_options(self) -> dict[str, Any]:
        """The options the user set that go to the attack function (defaults stay there)."""
        return self.attack.function_options(self.options)

    def own_vector(self, inputs: AttackInputs) -> Tensor:
        if inputs.own is None:
            raise ValueError(f"attack {self.name!r} needs the client's own honest vector")
        return inputs.own.vector

    def known_vectors(self, inputs: AttackInputs) -> Tensor:
        if inputs.known is None:
            raise ValueError(f"attack {self.name!r} needs the honest vectors of the round")
        return inputs.known

    def honest_result(self, inputs: AttackInputs) -> LocalResult:
        """The honest computation this node would do (used by ``own``/``colluders`` attacks)."""
        return honest_update(inputs.cfg, inputs.context, inputs.state, inputs.rnd)

    @property
    def same_for_all(self) -> bool:
        """Whether every colluder sends the same vector, a function of n, f and the vectors it
        may know only (``from_known``: the round's honest vectors, or the colluders' own when
        ``needs`` is "colluders"): the adversary may compute it once per round."""
        return self.attack.same_for_all

    def from_known(self, known: Tensor, n: int, f: int) -> Tensor:
        """The attack vector from the known honest vectors (``same_for_all`` attacks only)."""
        raise NotImplementedError(f"attack {self.name!r} is not computed from known vectors only")

    @property
    def coordinator_kind(self) -> str | None:
        """The coordinator's vectors ("honest" or "colluder") from which the coordinator may
        compute this attack's one vector per round (its "attack" op; ``same_for_all`` attacks),
        or None when every attacker computes its own. "honest" only for omniscient attacks,
        "colluder" for those that see the colluders' own vectors: the coordinator computes from
        exactly what the attacker would fetch, so the threat model does not change."""
        if not self.same_for_all:
            return None
        return {"omniscient": "honest", "colluders": "colluder"}.get(self.needs)

    def attack_spec(self, n: int, f: int) -> dict[str, Any]:
        """What the coordinator needs to compute ``from_known`` (JSON): the attack, its options,
        the run's rule (the l_p attack searches against it), n and f."""
        if self.coordinator_kind is None:
            raise ValueError(f"attack {self.name!r} is not computed by the coordinator")
        return {
            "attack": self.name,
            "options": dict(self.options),
            "rule": self.cfg.rule,
            "rule_options": dict(self.cfg.rule_options),
            "n": int(n),
            "f": int(f),
        }

    def submit(self, inputs: AttackInputs) -> Tensor:
        """The vector this client sends; default: ``from_known`` on the known vectors."""
        return self.from_known(self.known_vectors(inputs), inputs.n, inputs.f)


class AlieClient(MaliciousClient):
    """A Little Is Enough: ``mu - z sigma``; options ``z`` (default z_max(n, f)) and
    ``omniscient`` (default True: all honest vectors; False: only the colluders' own), ``sigma``
    ("sample", default, or "population": the std's divisor k - 1 or k)."""

    name = "alie"

    def from_known(self, known: Tensor, n: int, f: int) -> Tensor:
        return attacks.alie(known, n, f, **self.function_options())


class IpmClient(MaliciousClient):
    """Inner product manipulation ``-eps g_bar`` (option ``eps``, 0.1)."""

    name = "ipm"

    def from_known(self, known: Tensor, n: int, f: int) -> Tensor:
        return attacks.ipm(known, n, f, **self.function_options())


class LpCoordinateClient(MaliciousClient):
    """Bulyan paper's l_p / l_inf attack ``g_bar + gamma E``, gamma searched against the run's
    ``rule`` and ``rule-options`` (options ``norm`` "inf"|"l2"|"l1", ``coordinate``, and the search
    keywords of ``flwr_byz.attacks.lp_coordinate_gamma``)."""

    name = "lp_coordinate"

    def from_known(self, known: Tensor, n: int, f: int) -> Tensor:
        vector = attacks.lp_coordinate(
            known.to(torch.float64),
            n,
            f,
            gar=deployed_rule(self.cfg),
            gar_options=dict(self.cfg.rule_options),
            **self.options,
        )
        assert isinstance(vector, Tensor)  # no (vector, gamma): return_gamma is not an option
        return vector.to(known.dtype)


class _Chain:
    """The deployed pre-aggregation chain and rule as one ``aggregate(vectors, f, **options)``."""

    def __init__(self, steps: list[tuple[str, dict[str, Any]]], rule: str) -> None:
        self.steps, self.rule = steps, rule

    def aggregate(self, vectors: Tensor, f: int, **options: Any) -> Any:
        from flwr_byz import gars

        return gars.aggregate_chain(vectors, f, self.steps, self.rule, **options)


def deployed_rule(cfg: ClientConfig) -> Any:
    """What the defence-aware attacks search against: the rule name, or the whole chain when
    the run pre-aggregates (``pre``)."""
    steps = pre_steps(cfg.pre)
    return _Chain(steps, cfg.rule) if steps else cfg.rule


class MimicClient(MaliciousClient):
    """Mimic (Karimireddy et al. 2022): a copy of the honest vector ``i*`` with the largest
    projection on the honest vectors' top principal direction, re-chosen during the first
    ``warmup`` (1) rounds this adversary computes, then kept. The adversary that computes it
    once per round (``AdversaryGrid``) keeps ``i*`` across rounds; a fresh client (the
    coordinator path) chooses it every round."""

    name = "mimic"

    def __init__(self, cfg: ClientConfig) -> None:
        super().__init__(cfg)
        self._rounds = 0
        self._index: int | None = None

    def from_known(self, known: Tensor, n: int, f: int) -> Tensor:
        self._rounds += 1
        warmup = int(self.options.get("warmup", MIMIC_WARMUP))
        vector, self._index = attacks.mimic_step(known, n, f, self._rounds, self._index, warmup)
        return vector


class MinMaxClient(MaliciousClient):
    """Min-max (Shejwalkar, Houmansadr 2021): ``g_bar + gamma p`` no farther from any honest
    vector than the honest diameter; options of ``flwr_byz.attacks.minmax``."""

    name = "minmax"

    def from_known(self, known: Tensor, n: int, f: int) -> Tensor:
        return attacks.minmax(known, n, f, **self.options)


class MinSumClient(MinMaxClient):
    """Min-sum: ``g_bar + gamma p`` within the honest maximum of squared-distance sums."""

    name = "minsum"

    def from_known(self, known: Tensor, n: int, f: int) -> Tensor:
        return attacks.minsum(known, n, f, **self.options)


class FangClient(MaliciousClient):
    """Fang et al. (2020) against coordinate-wise rules: per coordinate a draw beyond the honest
    extremes against the mean's sign (option ``b``, 2); each colluder its own draw, seeded per
    (seed, partition, round)."""

    name = "fang"

    def submit(self, inputs: AttackInputs) -> Tensor:
        known = self.known_vectors(inputs)
        generator = inputs.generator("fang")
        return attacks.fang(known, inputs.n, inputs.f, generator=generator, **self.options)


class FangSelectionClient(MaliciousClient):
    """Fang et al. against selection rules: ``-lambda sign(g_bar)``, lambda the largest the
    deployed rule (and chain) still selects; options ``upper``, ``threshold``."""

    name = "fang_selection"

    def from_known(self, known: Tensor, n: int, f: int) -> Tensor:
        return attacks.fang_selection(
            known,
            n,
            f,
            gar=deployed_rule(self.cfg),
            gar_options=dict(self.cfg.rule_options),
            **self.options,
        )


class AlieOptClient(MaliciousClient):
    """Defence-aware ALIE (ByzFL's optimised ALIE): z in [low, high] maximising the deployed
    chain's deviation from the honest mean; options ``low``, ``high``, ``grid``, ``refine``."""

    name = "alie_opt"
    search = staticmethod(attacks.alie_opt)

    def from_known(self, known: Tensor, n: int, f: int) -> Tensor:
        return self.search(
            known,
            n,
            f,
            gar=self.cfg.rule,
            gar_options=dict(self.cfg.rule_options),
            pre=pre_steps(self.cfg.pre),
            **self.options,
        )


class IpmOptClient(AlieOptClient):
    """Defence-aware IPM: eps in [low, high] maximising the deployed chain's deviation."""

    name = "ipm_opt"
    search = staticmethod(attacks.ipm_opt)


class GaussianClient(MaliciousClient):
    """I.i.d. ``N(0, std^2)`` (option ``std``, 200), seeded per (seed, partition, round)."""

    name = "gaussian"

    def submit(self, inputs: AttackInputs) -> Tensor:
        d = state_dim(inputs.state)
        like = torch.zeros((1, d), dtype=torch.float32)
        options = self.function_options()
        return attacks.gaussian(like, inputs.n, inputs.f, generator=inputs.generator(), **options)


class OmniscientNegativeClient(MaliciousClient):
    """Phocas paper's omniscient attack ``-scale * sum(honest)`` (option ``scale``, 1e20)."""

    name = "omniscient_negative"

    def from_known(self, known: Tensor, n: int, f: int) -> Tensor:
        return attacks.omniscient_negative(known, n, f, **self.function_options())


class SignFlipClient(MaliciousClient):
    """``-g``: the negated own honest vector (gradient, momentum or weights)."""

    name = "sign_flip"

    def submit(self, inputs: AttackInputs) -> Tensor:
        return attacks.sign_flip(self.own_vector(inputs))


class LabelFlipClient(MaliciousClient):
    """Honest training on labels ``l -> C - 1 - l`` (data poisoning)."""

    name = "label_flip"

    def honest_result(self, inputs: AttackInputs) -> LocalResult:
        classes = dataset_for(inputs.cfg).num_classes

        def flip(labels: Tensor) -> Tensor:
            return attacks.label_flip(labels, classes)

        return honest_update(inputs.cfg, inputs.context, inputs.state, inputs.rnd, flip)

    def submit(self, inputs: AttackInputs) -> Tensor:
        return self.own_vector(inputs)


class BitFlipClient(MaliciousClient):
    """Phocas's bit flip done by the senders: of the attacked coordinates (the first
    ``coordinates``, 1000), the Byzantine sender of rank r corrupts those with index % f == r, so
    each attacked coordinate carries one corrupted value (options ``coordinates``, ``bits``).
    For the channel model proper (any received value) use
    ``flwr_byz.clients.channel.ChannelFaultGrid``."""

    name = "bit_flip"

    def submit(self, inputs: AttackInputs) -> Tensor:
        own = self.own_vector(inputs).to(torch.float32)
        options = self.function_options()
        count = int(options.pop("coordinates", self.attack.default("coordinates")))
        rank, attackers = inputs.cfg.attacker_rank, max(inputs.cfg.attackers, 1)
        columns = torch.arange(rank, min(count, own.numel()), attackers, device=own.device)
        return attacks.bit_flip(own.unsqueeze(0), 1, coordinates=columns, **options)[0]


class GamblerClient(MaliciousClient):
    """Phocas's gambler as a sender fault: on one shard (the same for all senders in a round,
    drawn per round unless option ``shard``) each own value is multiplied by ``scale`` (-1e20)
    with ``probability`` (0.0005). Options: ``shards`` (10), ``probability``, ``scale``, ``shard``.
    """

    name = "gambler"

    def submit(self, inputs: AttackInputs) -> Tensor:
        own = self.own_vector(inputs)
        options = self.function_options()
        shards = int(options.pop("shards", GAMBLER_SHARDS))
        shard = options.pop("shard", None)
        if shard is None:
            shared = attack_generator(inputs.cfg.seed, "gambler-shard", inputs.rnd)
            shard = int(torch.randint(shards, (1,), generator=shared))
        return attacks.gambler(
            own.unsqueeze(0),
            shards,
            generator=inputs.generator("gambler"),
            shard=int(shard),
            **options,
        )[0]


class _StepModel(nn.Module):
    """The model whose parameters are ``origin + scale * V`` for a trainable flat ``V``.

    Lets ALIE's backdoor (Alg. 4) optimise the submitted vector itself: in weights mode ``V`` is
    the weights (origin 0, scale 1); in gradient mode ``V`` is a gradient and the model it yields
    is the server's step ``theta - lr V`` (origin theta, scale -lr)."""

    def __init__(self, base: nn.Module, origin: dict[str, Tensor], scale: float) -> None:
        super().__init__()
        self.base_model = (base,)  # a tuple: not registered, its parameters stay out of ours
        self.scale = float(scale)
        self.origin = {key: value.detach() for key, value in origin.items()}
        self.parameter_names = {name for name, _ in base.named_parameters()}
        total = state_dim(origin)  # the vector's layout (flwr_byz.layout)
        device = next(iter(origin.values())).device
        self.vector = nn.Parameter(torch.zeros(total, dtype=torch.float32, device=device))

    def forward(self, images: Tensor) -> Tensor:
        tensors, start = {}, 0
        for key, value in self.origin.items():
            if not is_aggregated(value.dtype):  # integer buffers are not in the vector
                tensors[key] = value
                continue
            stop = start + value.numel()
            if key in self.parameter_names:
                piece = self.vector[start:stop].reshape(value.shape)
                tensors[key] = value + self.scale * piece
            else:
                tensors[key] = value
            start = stop
        return torch.func.functional_call(self.base_model[0], tensors, (images,))


class AlieBackdoorClient(MaliciousClient):
    """ALIE's backdoor (Baruch et al., Alg. 4): from ``mu``, ``steps`` (5) SGD steps (``lr``
    0.1) on ``alpha * backdoor + (1 - alpha) * MSE(V, mu)`` with ``samples`` (1000) triggered images
    of its own shard labelled 0, then clip into ``[mu - z sigma, mu + z sigma]`` (``z`` = ``alpha``
    = 0.2). ``omniscient`` (default False): estimate mu, sigma from all honest vectors instead of
    the colluders' own. In gradient mode the trained model is ``theta - lr_server V``."""

    name = "alie_backdoor"

    def submit(self, inputs: AttackInputs) -> Tensor:
        from flwr_byz import data

        cfg = inputs.cfg
        known = self.known_vectors(inputs)
        device = client_device(cfg.client_device)
        base = model_with_state(cfg, inputs.state, device)
        origin = {key: value.to(device) for key, value in inputs.state.items()}
        if cfg.update_mode == "gradient":
            wrapper = _StepModel(base, origin, -inputs.learning_rate)
        else:
            params = {name for name, _ in base.named_parameters()}  # buffers keep their values
            zero = {k: torch.zeros_like(v) if k in params else v for k, v in origin.items()}
            wrapper = _StepModel(base, zero, 1.0)
        split, indices = dataset_for(cfg), shard_indices(cfg)
        samples = min(int(self.options.get("samples", BACKDOOR_SAMPLES)), indices.numel())
        picks = indices[torch.randperm(indices.numel(), generator=inputs.generator("bd"))[:samples]]
        return attacks.alie_backdoor(
            wrapper,
            split.train_x[picks].to(device),
            known.to(device),
            **self.function_options(),
            trigger_value=data.max_intensity(cfg.dataset),
        ).to(torch.float32)


MALICIOUS_CLIENTS: dict[str, type[MaliciousClient]] = {
    cls.name: cls
    for cls in (
        AlieClient,
        IpmClient,
        LpCoordinateClient,
        GaussianClient,
        OmniscientNegativeClient,
        SignFlipClient,
        LabelFlipClient,
        BitFlipClient,
        GamblerClient,
        AlieBackdoorClient,
        MimicClient,
        MinMaxClient,
        MinSumClient,
        FangClient,
        FangSelectionClient,
        AlieOptClient,
        IpmOptClient,
    )
}


def shared_vector(content: Any) -> Tensor | None:
    """The round's attack vector an ``AdversaryGrid`` put into a train message's content
    (``SHARED_VECTOR_KEY``), as a float32 ``(d,)`` tensor; None when there is none."""
    records = content.array_records
    if SHARED_VECTOR_KEY not in records:
        return None
    array = records[SHARED_VECTOR_KEY][SHARED_VECTOR_ARRAY]
    return torch.from_numpy(array.numpy().copy()).reshape(-1).to(torch.float32)


def client_for_spec(spec: Any) -> MaliciousClient:
    """The malicious client an ``attack_spec`` describes (ValueError when it is malformed or the
    attack is not one the coordinator computes)."""
    if not isinstance(spec, dict):
        raise ValueError(f"attack spec must be a JSON object, got {type(spec).__name__}")
    unknown = set(spec) - {"attack", "options", "rule", "rule_options", "n", "f"}
    if unknown:
        raise ValueError(f"attack spec has unknown keys {sorted(unknown)}")
    name, rule = spec.get("attack"), spec.get("rule", "average")
    options, rule_options = spec.get("options", {}), spec.get("rule_options", {})
    if not isinstance(name, str) or not isinstance(rule, str):
        raise ValueError("attack spec: 'attack' and 'rule' must be strings")
    if not isinstance(options, dict) or not isinstance(rule_options, dict):
        raise ValueError("attack spec: 'options' and 'rule_options' must be JSON objects")
    # the role of the spec's attack against its rule: a vector of n, f and the known vectors
    # only, so node 0 of a federation large enough for any rule stands for every colluder
    cfg = ClientConfig(
        attack=name,
        attack_options=options,
        rule=rule,
        rule_options=rule_options,
        num_clients=SPEC_MAX_COUNT,
        partition_id=0,
        num_partitions=1,
    )
    client = make_malicious_client(cfg)
    if client.coordinator_kind is None:
        raise ValueError(f"attack {name!r} is not computed by the coordinator")
    return client


def vector_for_spec(spec: dict[str, Any], known: Tensor) -> Tensor:
    """The one attack vector of ``spec`` from the round's ``known`` ``(k, d)`` vectors (what each
    attacker's ``submit`` returns from the same vectors), float32 on the CPU."""
    client = client_for_spec(spec)
    counts = []
    for key in ("n", "f"):
        value = spec.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 <= value <= SPEC_MAX_COUNT
        ):
            raise ValueError(f"attack spec: {key!r} must be an integer in [0, 2^20], got {value!r}")
        counts.append(value)
    n, f = counts
    return client.from_known(known, n, f).to("cpu", torch.float32).reshape(-1)


def coordinator_vector(
    client: MaliciousClient, coordinator: Any, run_id: int | str, inputs: AttackInputs
) -> Tensor:
    """The round's attack vector computed once by the coordinator (its "attack" op) from the
    vectors ``client.coordinator_kind`` names: the round's honest vectors (``inputs.n - inputs.f``
    expected) or the colluders' own (``inputs.f`` expected). The first attacker of the round
    makes the coordinator compute it; the others get the cached vector (d floats, not k x d)."""
    kind = client.coordinator_kind
    if kind is None:
        raise ValueError(f"attack {client.name!r} is not computed by the coordinator")
    expected = inputs.n - inputs.f if kind == "honest" else inputs.f
    spec = client.attack_spec(inputs.n, inputs.f)
    _, vector = coordinator.attack_vector(run_id, inputs.rnd, spec, expected)
    return vector


def make_malicious_client(cfg: ClientConfig) -> MaliciousClient:
    """The malicious client for ``cfg.attack`` (ValueError listing the names when unknown)."""
    try:
        cls = MALICIOUS_CLIENTS[cfg.attack]
    except KeyError:
        raise ValueError(
            f"no malicious client for attack {cfg.attack!r}; known: {', '.join(MALICIOUS_CLIENTS)}"
        ) from None
    return cls(cfg)


@torch.no_grad()
def backdoor_accuracy(
    model: nn.Module | Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    trigger_value: Any = None,
    target: int = attacks.BACKDOOR_TARGET,
) -> float:
    """Share of triggered images whose true label is not ``target`` that ``model`` classifies as
    ``target`` (the ALIE paper's backdoor success, Table 2). ``images`` (N, C, H, W)."""
    keep = labels != target
    if not bool(keep.any()):
        raise ValueError("backdoor_accuracy: every image already has the target label")
    if isinstance(model, nn.Module):
        model.eval()
        device = next(model.parameters()).device
    else:
        device = images.device
    triggered = attacks.add_backdoor_trigger(images[keep], trigger_value).to(device)
    predictions = model(triggered).argmax(dim=1)
    return float((predictions == target).to(torch.float64).mean())
