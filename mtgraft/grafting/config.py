"""Settings of ``mtgraft graft``: the named recipes, the run config, and the data settings a checkpoint implies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from mtgraft.config import DEFAULT_MAX_TEST, BaseConfig, CommaList, KShot, RecordedMaxTest, Sparsities
from mtgraft.grafting.catalog import METHODS

if TYPE_CHECKING:
    from mtgraft.models import CheckpointMeta

#: Named recipes for the learned graft. ``paper`` reproduces the reference's behaviour (region may grow
#: past its budget); ``thorough`` is the default, chosen by measurement: the paper recipe's Rel or better at
#: equal region size in about a ninth of its time (docs/benchmarks.md#grafting); ``fast`` costs about a fifth
#: of ``thorough`` and stops early (the studies use it to stay within their time budget).
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"updates": 100, "lr": 1e7, "sigmoid_bias": 10.0, "examples_per_update": 1024, "batch_size": 8,
              "budget": "free", "candidates": None, "patience": None, "step_rule": "gd", "init": "movement"},
    "fast": {"updates": 10, "lr": 1e8, "sigmoid_bias": 10.0, "examples_per_update": 1024, "batch_size": 8,
             "budget": "strict", "candidates": 10, "patience": 2, "step_rule": "gd", "init": "auto"},
    # the default: strict budget, 100·k candidates, no early stop
    "thorough": {"updates": 10, "lr": 1e8, "sigmoid_bias": 10.0, "examples_per_update": 1024, "batch_size": 8,
                 "budget": "strict", "candidates": 100, "patience": None, "step_rule": "gd", "init": "auto"},
}
DEFAULT_METHODS = ["graft", "topk", "random", "bias-only"]


class GraftConfig(BaseConfig):
    """Settings of ``mtgraft graft``. Unset learning settings come from the recipe; unset data settings
    from the checkpoint."""

    task: str | None = None
    all_tasks: bool = False
    finetuned: str
    pretrained: str | None = None
    sparsity: Sparsities = Field(default_factory=lambda: [1e-4])
    method: CommaList = Field(default_factory=lambda: list(DEFAULT_METHODS))
    recipe: Literal["fast", "thorough", "paper"] = "thorough"
    updates: int | None = Field(None, ge=0)
    lr: float | None = Field(None, gt=0)
    sigmoid_bias: float | None = None
    examples_per_update: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    budget: Literal["strict", "free"] | None = None
    candidates: float | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=1)
    step_rule: Literal["gd", "normalized"] | None = None
    init: Literal["auto", "movement", "saliency", "fisher", "grad-movement"] | None = None
    #: per method, its own settings over the defaults in ``catalog.METHODS`` (e.g. {"graft-ste": {"lr": 0.2}})
    method_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seed: int = 13
    k: KShot = None
    data_seed: int | None = None
    # not MaxTest: None means "the checkpoint's cap", so 'all' cannot be told apart from unset here
    max_test: RecordedMaxTest = None
    max_length: int | None = None
    eval_tasks: CommaList = Field(default_factory=list)
    save_baselines: bool = False
    device: str = "auto"
    out: str | None = None
    do_register: bool = True
    tracking_uri: str | None = None
    track: bool = True
    resume: bool = False

    @field_validator("method")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in METHODS:
                raise ValueError(f"unknown method '{m}' (available: {', '.join(METHODS)})")
        return v

    @field_validator("method_options", mode="before")
    @classmethod
    def _method_option_strings(cls, v: Any) -> Any:
        """``--method-option METHOD.KEY=VALUE`` (repeatable; VALUE read as YAML) into the nested mapping."""
        if not isinstance(v, (list, tuple)):
            return v
        import yaml

        out: dict[str, dict[str, Any]] = {}
        for item in v:
            name, eq, value = str(item).partition("=")
            method, dot, key = name.strip().rpartition(".")
            if not eq or not dot or not method or not key:
                raise ValueError(f"'{item}' is not METHOD.KEY=VALUE (e.g. graft-ste.lr=0.2)")
            out.setdefault(method, {})[key] = yaml.safe_load(value)
        return out

    @field_validator("method_options")
    @classmethod
    def _method_options(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for m, opts in v.items():
            if m not in METHODS:
                raise ValueError(f"options for unknown method '{m}' (available: {', '.join(METHODS)})")
            METHODS[m].settings({}, opts)  # unknown keys are an error
        return v

    def method_settings(self, name: str, shared: dict[str, Any] | None = None) -> dict[str, Any]:
        """What method ``name`` runs with: the shared settings it reads (``shared``, default the recipe's
        with explicit options on top), its own defaults, then ``method_options[name]``."""
        return METHODS[name].settings(self.learn_settings() if shared is None else shared,
                                      self.method_options.get(name))

    def learn_settings(self) -> dict[str, Any]:
        """The recipe's settings with explicit options on top."""
        s = dict(RECIPES[self.recipe])
        for key in s:
            v = getattr(self, key)
            if v is not None:
                s[key] = v
        return s


def data_settings(cfg: GraftConfig | Any, meta: CheckpointMeta) -> dict[str, Any]:
    """K, data seed, test cap, max length: explicit options, else what the checkpoint recorded."""
    d = dict(meta.data or {})
    out = {"k": d.get("k", 64), "seed": d.get("seed", 13), "max_test": d.get("max_test", DEFAULT_MAX_TEST),
           "max_length": d.get("max_length", 128)}
    for key, attr in (("k", "k"), ("seed", "data_seed"), ("max_test", "max_test"), ("max_length", "max_length")):
        v = getattr(cfg, attr, None)
        if v is not None:
            out[key] = v
    return out
