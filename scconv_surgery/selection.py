"""Choosing which convs to replace from measurements, written as ordinary rules.

From a :class:`~scconv_surgery.profiling.Profile` (each eligible conv's dense and SCConv latency on
the user's device, MACs and parameters, optionally its sensitivity), :func:`select_layers` chooses
a set of convs:

- ``faster``: every conv whose SCConv is faster than the dense conv by at least ``margin``
  (ratio ``<= 1 - margin``);
- ``target_macs`` / ``target_params`` / ``target_latency``: a budget, a fraction in (0, 1] of the
  original network's MACs, parameters or (predicted) latency, met with the least predicted latency
  (or, when the profile carries sensitivities, the least summed sensitivity).

The budget is met greedily: convs in the order of cost per unit saved (cost: the latency the
replacement adds, negative where it is faster, or its sensitivity), until the budget holds; then
every conv that the budget does not need is dropped again, the costliest first, so the result lands
close to the budget rather than far below it. Everything is deterministic; ties go by name.

The result is a list of :class:`~scconv_surgery.rules.Rule`\\ s with exact names and each conv's
hyperparameters, which :func:`~scconv_surgery.plan.plan_conversion` reads as any other rules, and
which :func:`write_rules_file` saves as a YAML rules file (reviewable, versionable, replayable).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import SelectionError
from .layers import ScConvConfig
from .plan import Plan
from .profiling import ModelTiming, Profile, ProfileSettings
from .timing import Timer
from .rules import Rule, RuleAction

__all__ = ["Criterion", "SelectionConfig", "Selection", "SelectionReport", "select_layers", "exact_rules",
           "write_rules_file", "check_budget", "DEFAULT_MARGIN", "MISS_TOLERANCE"]

DEFAULT_MARGIN = 0.05
MISS_TOLERANCE = 0.10  # a measured end-to-end latency this far from the prediction is reported


class Criterion(str, Enum):
    """What a selection optimises for."""

    FASTER = "faster"
    TARGET_MACS = "target_macs"
    TARGET_PARAMS = "target_params"
    TARGET_LATENCY = "target_latency"


def check_budget(criterion: Criterion | str, value: float | None, margin: float = DEFAULT_MARGIN) -> None:
    """Raises:
        SelectionError: a budget missing or outside (0, 1], or a margin outside [0, 1) (named by
            its argument: ``target_macs``, ``margin``, ...).
    """
    criterion = Criterion(criterion)
    if criterion is Criterion.FASTER:
        if not (isinstance(margin, (int, float)) and 0.0 <= margin < 1.0):
            raise SelectionError(f"must be a fraction in [0, 1), got {margin!r}", "margin")
        return
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and 0.0 < value <= 1.0):
        raise SelectionError(f"must be a fraction of the original in (0, 1], got {value!r}", criterion.value)


@dataclass(frozen=True)
class SelectionConfig:
    """A measured selection, as :func:`~scconv_surgery.pipeline.run_conversion` takes it.

    Attributes:
        criterion: ``faster`` or a budget (:class:`Criterion`).
        value: the budget, a fraction in (0, 1] of the original; None for ``faster``.
        margin: for ``faster``: how much faster SCConv must be (0.05: at most 0.95x the dense conv).
        settings: how to measure (device, batch size, dtype, ...); the device is checked before
            any work.
        profile: a saved profile to reuse instead of measuring (checked to be of this model,
            device and plan), or a path to one.
        use_sensitivity: minimise sensitivity instead of latency when the profile carries it.
        write_rules: also write the chosen rules to this YAML file (even in a dry run).
        measure: time the converted network against the original, end to end.
        timer: the clock (default: the device's, see :func:`~scconv_surgery.timing.default_timer`).
        cache_dir: the profile cache (None: the default; False: none).

    Raises:
        SelectionError: see :func:`check_budget`.
    """

    criterion: Criterion | str
    value: float | None = None
    margin: float = DEFAULT_MARGIN
    settings: ProfileSettings = field(default_factory=ProfileSettings)
    profile: Profile | str | Path | None = None
    use_sensitivity: bool = True
    write_rules: Path | None = None
    measure: bool = True
    timer: Timer | None = None
    cache_dir: Path | None | bool = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "criterion", Criterion(self.criterion))
        check_budget(self.criterion, self.value, self.margin)
        if self.write_rules is not None:
            object.__setattr__(self, "write_rules", Path(self.write_rules))


@dataclass(frozen=True)
class Selection:
    """The chosen convs and what the profile predicts for them.

    Attributes:
        criterion, value, margin: what was asked.
        objective: what was minimised: ``latency`` or ``sensitivity`` (``faster`` uses latency).
        chosen: the chosen conv names, in plan order.
        rules: one include rule per chosen conv (exact name, its hyperparameters), or a single
            ``exclude *`` when none is chosen, so that replaying them never replaces everything.
        candidates: how many measured convs there were to choose from.
        predicted_latency: predicted converted / original latency of the whole network.
        macs_ratio, params_ratio: converted / original MACs and parameters (exact, from the counts).
        source, device, device_name: the model and the device the profile measured.
    """

    criterion: Criterion
    value: float | None
    margin: float
    objective: str
    chosen: tuple[str, ...]
    rules: tuple[Rule, ...]
    candidates: int
    predicted_latency: float
    macs_ratio: float
    params_ratio: float
    source: str
    device: str
    device_name: str

    def describe(self) -> str:
        """``faster (margin 0.05)`` / ``target_macs 0.75, least latency``."""
        if self.criterion is Criterion.FASTER:
            return f"faster (margin {self.margin:g})"
        return f"{self.criterion.value} {self.value:g}, least {self.objective}"

    def to_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion.value, "value": self.value, "margin": self.margin,
                "objective": self.objective, "chosen": list(self.chosen), "candidates": self.candidates,
                "predicted_latency": self.predicted_latency, "macs_ratio": self.macs_ratio,
                "params_ratio": self.params_ratio, "device": self.device, "device_name": self.device_name}


@dataclass(frozen=True)
class SelectionReport:
    """A selection and, after conversion, the converted network timed against the original.

    Attributes:
        selection: what was chosen and predicted.
        timing: the end-to-end measurement (None when not measured).
        profile_seconds: how long profiling took (0 for a reused profile).
        cached_layers: layers the profile took from the cache.
    """

    selection: Selection
    timing: ModelTiming | None = None
    profile_seconds: float = 0.0
    cached_layers: int = 0

    @property
    def missed(self) -> bool:
        """The measured latency ratio is more than :data:`MISS_TOLERANCE` away from the prediction."""
        if self.timing is None:
            return False
        predicted = self.selection.predicted_latency
        return abs(self.timing.ratio - predicted) > MISS_TOLERANCE * predicted

    def warning(self) -> str | None:
        if not self.missed or self.timing is None:
            return None
        return (f"the selection predicted {self.selection.predicted_latency:.3f}x the original latency, "
                f"measured {self.timing.ratio:.3f}x (more than {MISS_TOLERANCE:.0%} off)")

    def to_dict(self) -> dict[str, Any]:
        return {**self.selection.to_dict(), "measured_latency": self.timing.ratio if self.timing else None,
                "timing": self.timing.to_dict() if self.timing else None, "prediction_missed": self.missed,
                "profile_seconds": round(self.profile_seconds, 3), "cached_layers": self.cached_layers}


def _pattern(name: str) -> str:
    """A pattern matching exactly ``name``: the name itself, or an escaped regex if it holds glob characters."""
    return f"re:{re.escape(name)}" if any(c in name for c in "*?[]") or name.startswith("re:") else name


def exact_rules(plan: Plan, names: Sequence[str]) -> tuple[Rule, ...]:
    """One include rule per name, with the hyperparameters its decision in ``plan`` replaces it with
    (those that differ from :class:`~scconv_surgery.layers.ScConvConfig`'s defaults); an ``exclude *``
    rule when ``names`` is empty.

    Raises:
        KeyError: a name that ``plan`` does not replace.
    """
    if not names:
        return (Rule("*", RuleAction.EXCLUDE),)
    decisions = {d.name: d for d in plan.replaced}
    default = ScConvConfig().to_dict()
    rules = []
    for name in names:
        config = decisions[name].config or ScConvConfig()
        overrides = {k: v for k, v in config.to_dict().items() if v != default[k]}
        rules.append(Rule(_pattern(name), **overrides))
    return tuple(rules)


def _budget_gain(profile: Profile, criterion: Criterion) -> tuple[dict[str, float], float]:
    """What each layer saves towards the budget, and the original total."""
    if criterion is Criterion.TARGET_MACS:
        return {lp.name: float(lp.macs_before - lp.macs_after) for lp in profile.layers}, float(profile.model_macs)
    if criterion is Criterion.TARGET_PARAMS:
        return ({lp.name: float(lp.params_before - lp.params_after) for lp in profile.layers},
                float(profile.model_params))
    return {lp.name: lp.seconds_saved for lp in profile.layers}, profile.model_seconds


def _choose_for_budget(names: Sequence[str], gain: Mapping[str, float], cost: Mapping[str, float], need: float
                       ) -> list[str]:
    """Greedy by cost per unit gained (ties by name) until ``need`` is met; then drop, costliest
    first, every conv the budget does not need."""
    useful = sorted((n for n in names if gain[n] > 0), key=lambda n: (cost[n] / gain[n], -gain[n], n))
    chosen, saved = [], 0.0
    for name in useful:
        if saved >= need:
            break
        chosen.append(name)
        saved += gain[name]
    for name in sorted(chosen, key=lambda n: (-cost[n], n)):
        if saved - gain[name] >= need:
            chosen.remove(name)
            saved -= gain[name]
    return chosen


def select_layers(profile: Profile, plan: Plan, criterion: Criterion | str, value: float | None = None, *,
                  margin: float = DEFAULT_MARGIN, use_sensitivity: bool = True,
                  candidates: Sequence[str] | None = None) -> Selection:
    """Choose the convs to replace from a profile.

    Args:
        profile: the measurements (:func:`~scconv_surgery.profiling.profile_plan`).
        plan: the plan the profile was made for (gives each conv's hyperparameters for the rules).
        criterion: ``faster``, ``target_macs``, ``target_params`` or ``target_latency``.
        value: the budget, a fraction in (0, 1] of the original network's total; None for ``faster``.
        margin: for ``faster``, how much faster SCConv must be.
        use_sensitivity: minimise summed sensitivity, when every profiled layer has one.
        candidates: choose only among these names (default: every profiled layer that ``plan``
            replaces).

    Returns:
        A :class:`Selection`; its rules replay the choice with :func:`~scconv_surgery.plan.plan_conversion`.

    Raises:
        SelectionError: a budget outside (0, 1] (:func:`check_budget`), or one that replacing every
            candidate that helps cannot meet (the message gives the best reachable fraction).
    """
    criterion = Criterion(criterion)
    check_budget(criterion, value, margin)
    replaced = {d.name for d in plan.replaced}
    allowed = set(candidates) if candidates is not None else replaced
    layers = [lp for lp in profile.layers if lp.name in allowed and lp.name in replaced]
    names = [lp.name for lp in layers]
    by_name = {lp.name: lp for lp in layers}
    sensitive = use_sensitivity and bool(layers) and all(lp.sensitivity is not None for lp in layers)
    objective = "sensitivity" if sensitive and criterion is not Criterion.FASTER else "latency"
    if criterion is Criterion.FASTER:
        chosen = [lp.name for lp in layers if lp.ratio <= 1.0 - margin]
    else:
        gain, total = _budget_gain(profile, criterion)
        need = (1.0 - float(value)) * total - 1e-9 * total  # type: ignore[arg-type]  # slack: rounding
        reachable = sum(g for n, g in gain.items() if n in by_name and g > 0)
        if reachable + 1e-12 < need:
            raise SelectionError(f"{value:g} of the original cannot be reached: replacing every candidate conv that "
                                 f"helps gives {(total - reachable) / total:.3f}", criterion.value)
        cost = {n: (by_name[n].sensitivity if sensitive else -by_name[n].seconds_saved) for n in names}
        if criterion is Criterion.TARGET_LATENCY and not sensitive:  # least latency: the biggest savings first
            cost = {n: -gain[n] for n in names}
        chosen_set = set(_choose_for_budget(names, {n: gain[n] for n in names}, cost, need))
        chosen = [n for n in names if n in chosen_set]
    picked = [by_name[n] for n in chosen]
    seconds = profile.model_seconds - sum(lp.seconds_saved for lp in picked)
    macs = profile.model_macs - sum(lp.macs_before - lp.macs_after for lp in picked)
    params = profile.model_params - sum(lp.params_before - lp.params_after for lp in picked)
    return Selection(criterion, None if criterion is Criterion.FASTER else float(value),  # type: ignore[arg-type]
                     margin, objective, tuple(chosen), exact_rules(plan, chosen), len(layers),
                     seconds / profile.model_seconds if profile.model_seconds > 0 else 1.0,
                     macs / profile.model_macs if profile.model_macs else 1.0,
                     params / profile.model_params if profile.model_params else 1.0,
                     profile.source.display_name, profile.settings.device, profile.device_name)


def _settings_text(profile: Profile) -> str:
    s = profile.settings
    return (f"{s.device} ({profile.device_name}), {s.dtype}, batch {s.batch_size}, "
            f"{'channels_last' if s.channels_last else 'contiguous'}, {'optimized' if s.optimized else 'eager'} "
            f"{s.mode}, {profile.timer}, {s.repeats} rounds, torch {profile.torch_version}")


def write_rules_file(path: str | Path, selection: Selection, profile: Profile | None = None) -> Path:
    """Write ``selection.rules`` as a YAML rules file with a comment header saying how it was made.

    :func:`~scconv_surgery.rules_file.load_rules_file` reads it back to the same rules.
    """
    import yaml

    path = Path(path)
    header = [f"# Rules chosen by scconv-surgery's measured selection: {selection.describe()}",
              f"# model {selection.source}; {len(selection.chosen)} of {selection.candidates} measured convs chosen",
              f"# predicted: latency {selection.predicted_latency:.3f}x, MACs {selection.macs_ratio:.3f}x, "
              f"params {selection.params_ratio:.3f}x of the original"]
    if profile is not None:
        header.append(f"# measured on {_settings_text(profile)}")
    header.append("# Replay with convert's rules-file option; review and edit like any rules file.")
    body = yaml.safe_dump({"rules": [rule.to_dict() for rule in selection.rules]}, sort_keys=False)
    path.write_text("\n".join(header) + "\n" + body, encoding="utf-8")
    return path
