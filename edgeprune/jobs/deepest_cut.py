"""The deepest cut within the tolerance: the level search of `compress` (on unless
`--flops-reduction` pins one level; a `--latency-ms` budget is checked against the deepest cut
found, and the miss is stated when it falls short).

The policy (which level next, when to stop, which trial wins) is
`edgeprune.pruning.level_search`; this module carries a trial out. Each trial prunes
progressively: from the model of the deepest accepted trial below it (the dense model at
first), with the criterion's scores of the channels that model kept (scored once, on the
dense model), one-shot to the level's share of the dense model's FLOPs; it then fine-tunes
for `policy.trial_epochs` epochs (a pinned run's fine-tuning when cut from the dense model, a
third of it when cut from an accepted trial; the winner ships as it is, not fine-tuned
again) and is judged by the file that would ship (the target's format at its
first precision, int8 post-training quantization on the Pi profiles) on the validation split
(half of the held-out images, see `compress._resolve`). The images the report uses are never
read here.

Every trial is written to the run folder as it ends (`search.json`, and the trial's
state_dict and channel scores under `search/`), so a run killed during the search resumes at
the trial it was in: the finished trials' models are rebuilt by replaying their pruning from
the dense model and loading their weights, and a trial that repeated another's cut is linked
to that trial's model again, as it was in the killed run.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.console import info
from edgeprune.devices.estimate import estimate_model
from edgeprune.devices.formats import format_named
from edgeprune.errors import EdgepruneError
from edgeprune.export import ExportOptions, export_model
from edgeprune.export.api import file_predictions
from edgeprune.files import atomic_write_text
from edgeprune.jobs.compress_files import validation_images
from edgeprune.jobs.compress_model import score_and_prune
from edgeprune.jobs.compress_types import VERIFY_SAMPLES, Inputs, Samples
from edgeprune.jobs.policy import (
    ToleranceVerdict,
    qat_epochs,
    qat_lr,
    qat_wanted,
    search_settings,
    teacher,
    tolerance_verdict,
    trial_epochs,
)
from edgeprune.jobs.runs import RunFolder
from edgeprune.models.copying import clone
from edgeprune.pruning import FlopsReduction, prune
from edgeprune.pruning.level_search import SearchState, Trial, run_search
from edgeprune.pruning.search import Unreachable, count
from edgeprune.training import TrainConfig, train
from edgeprune.training.qat import train_qat

SEARCH_FILE = "search.json"
TRIALS = "search"
MAX_RELATIVE = 0.95
UNREACHABLE = "unreachable"
"""A trial's note when its level is deeper than pruning can cut the architecture (the search
bisects back towards the accepted levels)."""


@dataclass
class SearchOutcome:
    """The winning trial and its model (when no level was within the tolerance, the
    shallowest trial, so that the dense files decide what ships), and the whole search."""

    model: nn.Module
    trial: Trial
    found: bool
    state: SearchState


class _Trials:
    """The models and channel scores of the trials, in memory and in the run folder."""

    def __init__(self, inputs: Inputs, run: RunFolder, dense: nn.Module) -> None:
        self.inputs, self.run, self.dense = inputs, run, dense
        self.models: dict[int | None, nn.Module] = {None: dense}
        self.scores: dict[int | None, dict[str, torch.Tensor]] = {}
        self.x = torch.zeros(1, *inputs.spec.shape)

    def prune_from(self, parent: int | None, level: float, parent_achieved: float
                   ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """The parent's model pruned one-shot to `level` of the dense FLOPs, with its scores;
        the kept channels' scores become the child's. `parent_achieved` is the reduction the
        parent reached (channel rounding overshoots the level asked for); a level it already
        reaches is the parent's own cut."""
        cfg = self.inputs.cfg
        relative = min(MAX_RELATIVE, 1 - (1 - level) / (1 - parent_achieved))
        if relative <= 0:
            return clone(self.models[parent]), self.scores[parent]
        result = prune(clone(self.models[parent]), self.x, scores=self.scores[parent],
                       round_to=self.inputs.target.simd_width,
                       global_ranking=cfg.global_ranking, goal=FlopsReduction(relative),
                       residual_stream=cfg.residual_stream)
        return result.model, {n: s[result.kept[n]] if n in result.kept else s
                              for n, s in self.scores[parent].items()}

    def twin_of(self, earlier: list[Trial], parent: int | None, macs: int) -> int | None:
        """The trial among `earlier` whose model a cut of `parent`'s model to `macs` would be:
        the parent itself when the cut is the parent's, else a fine-tuned trial that made
        the same cut from the same model (a parent that was itself such a twin counts as
        the trial it repeats). None: a new cut."""
        if parent is not None and earlier[parent].macs == macs:
            return parent
        return next((i for i, t in enumerate(earlier)
                     if t.macs == macs and t.cost > 0  # unreachable trials cost 0 too
                     and self.models.get(t.parent) is self.models[parent]), None)

    def keep(self, index: int, model: nn.Module, scores: dict[str, torch.Tensor]) -> None:
        """Remember trial `index`'s model and scores, and write both beside search.json."""
        self.models[index], self.scores[index] = model, scores
        folder = self.run.path(TRIALS)
        folder.mkdir(exist_ok=True)
        for name, obj in (("pt", model.state_dict()), ("scores.pt", self.scores[index])):
            path = folder / f"trial-{index}.{name}"
            torch.save(obj, path)
            self.run.record(path, "search-trial", "search", trial=index)

    def restore(self, state: SearchState, achieved: dict[int | None, float]) -> None:
        """Rebuild the finished trials' models (replaying their pruning, loading weights); a
        trial that repeated another's cut shares that trial's model, as in the killed run."""
        for index, trial in enumerate(state.trials):
            if trial.note.startswith(UNREACHABLE):  # no model was made
                continue
            twin = self.twin_of(state.trials[:index], trial.parent, trial.macs) \
                if trial.cost == 0 else None
            if twin is not None:  # the same model as in the run that was killed
                self.models[index], self.scores[index] = self.models[twin], self.scores[twin]
                continue
            model, scores = self.prune_from(trial.parent, trial.level, achieved[trial.parent])
            weights = torch.load(self.run.path(TRIALS) / f"trial-{index}.pt",
                                 weights_only=True)
            model.load_state_dict(weights)
            self.models[index] = model
            self.scores[index] = scores


def search_deepest_cut(inputs: Inputs, run: RunFolder, dense: nn.Module,
                       samples: Samples, scores: dict[str, torch.Tensor] | None
                       ) -> SearchOutcome:
    """Search the deepest pruning level whose shipped file stays within --max-drop on the
    validation split; returns the winner, fine-tuned by its trial (and its accepted parents)."""
    cfg, data = inputs.cfg, inputs.data
    settings = search_settings(cfg, len(data.train))
    epochs = {from_dense: trial_epochs(cfg, len(data.train), from_dense)
              for from_dense in (True, False)}
    precision, ship = inputs.precisions[0], inputs.target.ship_format
    qat_epochs_ = qat_epochs(cfg, len(data.train)) if format_named(ship).qat else 0.0
    dense_macs = count(dense, torch.zeros(1, *inputs.spec.shape))[0]
    val_x, val_y = validation_images(inputs)
    dense_right = model_right(dense, val_x, val_y)
    trials = _Trials(inputs, run, dense)
    scores, _ = score_and_prune(inputs, run, dense, FlopsReduction(settings.start), scores)
    trials.scores[None] = scores
    state = _load_state(run)
    achieved: dict[int | None, float] = {None: 0.0} | {
        i: t.achieved for i, t in enumerate(state.trials)}
    if state.trials:
        info(f"search: resuming after {len(state.trials)} finished trial"
             f"{'s' if len(state.trials) > 1 else ''}")
        trials.restore(state, achieved)
    info(f"search: the deepest cut whose {ship} {precision} file stays within "
         f"{cfg.max_drop:g} point{'' if cfg.max_drop == 1 else 's'} of dense on {len(val_y)} "
         "validation images "
         f"(dense top-1 {dense_right.mean() * 100:.2f}%; {_rule(dense_right, cfg.max_drop)}); "
         f"{_epochs_line(epochs)}, budget {settings.budget:g} epochs")

    def verdict(right: np.ndarray) -> ToleranceVerdict:
        return tolerance_verdict(dense_right, right, cfg.max_drop)

    def evaluate_level(level: float, parent: int | None) -> Trial:
        t0 = time.perf_counter()
        try:
            model, kept_scores = trials.prune_from(parent, level, achieved[parent])
        except Unreachable as e:  # deeper than the architecture allows: the bracket's top
            index = len(achieved) - 1
            achieved[index] = level
            reason = f"from {_model_of(state, parent)}, {e}"  # its share is of that model
            info(f"search: level {level:.1%} cannot be reached ({reason}): rejected")
            return Trial(level, 0.0, 0, 100.0, False, 0.0, time.perf_counter() - t0, None,
                         parent, f"{UNREACHABLE}: {reason}")  # no model: 100 points lost
        macs = count(model, torch.zeros(1, *inputs.spec.shape))[0]
        twin = trials.twin_of(state.trials, parent, macs)
        if twin is not None:  # channel rounding made the same cut (or the parent's): judged
            same = state.trials[twin]
            index = len(achieved) - 1
            achieved[index] = same.achieved
            trials.keep(index, trials.models[twin], trials.scores[twin])
            info(f"search: level {level:.1%} cuts the same channels as level {same.level:.1%} "
                 f"(-{same.achieved:.1%} MACs): {'accepted' if same.accepted else 'rejected'} "
                 "as it was, without fine-tuning it again")
            return Trial(level, same.achieved, macs, same.drop_points, same.accepted, 0.0,
                         time.perf_counter() - t0, same.latency_ms, parent,
                         f"{same.note}, the cut of level {same.level:g}", same.drop_bound)
        tuning = epochs[parent is None]
        tcfg = TrainConfig(epochs=tuning, lr=cfg.lr, batch_size=cfg.batch_size,
                           seed=cfg.seed + len(achieved), monitor=False)
        if tuning > 0:
            train(model, data, tcfg, teacher=teacher(cfg, dense),
                  description=f"fine-tuning level {level:.0%}")
        model = model.cpu().eval()
        right, latency = _judge(inputs, model, samples, val_x, precision)
        judged, note, cost = verdict(right == val_y.numpy()), f"{ship} {precision}", tuning
        fp32 = verdict(model_right(model, val_x, val_y)) if (
            precision == "int8" and qat_epochs_ > 0) else None
        if fp32 is not None and qat_wanted(judged, fp32):
            info(f"search: level {level:.1%} int8 loses {_drop(judged)} on validation, fp32 "
                 f"{_drop(fp32)} is within {cfg.max_drop:g}: quantization-aware training for "
                 f"{qat_epochs_:g} epochs, as compress would")
            qat = train_qat(model, data, TrainConfig(epochs=qat_epochs_, lr=qat_lr(cfg),
                                                     batch_size=cfg.batch_size,
                                                     seed=cfg.seed + len(achieved)),
                            teacher=teacher(cfg, dense), evaluate=False,
                            description=f"quantization-aware training, level {level:.0%}")
            right, latency = _judge(inputs, qat.model, samples, val_x, "int8-qat",
                                    qat.quantizer)
            judged, note, cost = (verdict(right == val_y.numpy()), f"{ship} int8 (QAT)",
                                  cost + qat_epochs_)
        trial = Trial(level, 1 - macs / dense_macs, macs, judged.drop.points, judged.within,
                      cost, time.perf_counter() - t0, latency, parent, note,
                      judged.drop.high if judged.by_bound else None)
        index = len(achieved) - 1
        achieved[index] = trial.achieved
        trials.keep(index, model, kept_scores)
        info(f"search: level {level:.1%} -> MACs {macs / 1e6:.2f}M (-{trial.achieved:.1%}), "
             f"validation drop {_drop(judged)}, ~{latency:.3f} ms on {inputs.target.name}: "
             f"{'accepted' if trial.accepted else 'rejected'}")
        return trial

    state = run_search(evaluate_level, settings, state,
                       on_trial=lambda s, _: _save_state(run, s))
    _save_state(run, state)
    if not state.trials:
        raise EdgepruneError(f"the level search ran no trial ({state.stopped}); raise "
                             "--search-budget or pin a level with --flops-reduction")
    best = state.best()
    made = [i for i, t in enumerate(state.trials) if not t.note.startswith(UNREACHABLE)]
    if not made:
        raise EdgepruneError(f"no level the search tried could be cut ({state.trials[0].note})"
                             "; pin a shallower one with --flops-reduction")
    index = state.trials.index(best) if best is not None else min(
        made, key=lambda i: state.trials[i].level)
    info(f"search: {state.stopped}; "
         + (f"deepest within the tolerance: level {best.level:.1%} (-{best.achieved:.1%} MACs)"
            if best else "no level was within the tolerance"))
    budget = _budget_verdict(inputs, state.trials[index]) if best is not None else {}
    run.stage_done("search", wall_s=state.wall(), trials=len(state.trials),
                   stopped=state.stopped, best=index, epochs_spent=state.spent(), **budget)
    return SearchOutcome(trials.models[index], state.trials[index], best is not None, state)


def _budget_verdict(inputs: Inputs, trial: Trial) -> dict[str, float | bool]:
    """With --latency-ms, whether the deepest cut within the tolerance meets the budget on
    the target's estimate, said in one line with the miss in ms: deeper cuts were outside
    the tolerance, so no level meets both when this one does not."""
    budget = inputs.cfg.latency_ms
    if budget is None or trial.latency_ms is None:
        return {}
    met = trial.latency_ms <= budget
    info(f"search: the deepest cut within the tolerance estimates {trial.latency_ms:.3f} ms on "
         f"{inputs.target.name}: " + (f"within the {budget:g} ms budget" if met else
         f"misses the {budget:g} ms budget by {trial.latency_ms - budget:.3f} ms; no level "
         "within the tolerance meets it (raise --max-drop or --latency-ms)"))
    return {"latency_budget_ms": budget, "budget_met": met,
            "budget_missed_by_ms": max(0.0, trial.latency_ms - budget)}


def _model_of(state: SearchState, parent: int | None) -> str:
    """Which model a trial prunes, in words: an Unreachable's share of the FLOPs is of it."""
    if parent is None:
        return "the dense model"
    trial = state.trials[parent]
    return f"level {trial.level:.1%}'s model (-{trial.achieved:.1%} MACs of the dense model)"


def _judge(inputs: Inputs, model: nn.Module, samples: Samples, val_x: torch.Tensor,
           precision: str, quantizer: Any = None) -> tuple[np.ndarray, float]:
    """The would-be shipped file's top-1 class of each validation image and its target
    estimate; `quantizer` is QAT's, for an 'int8-qat' model."""
    with tempfile.TemporaryDirectory(prefix="edgeprune-trial-") as tmp:
        result = export_model(model, inputs.spec, Path(tmp), val_x[:VERIFY_SAMPLES],
                              formats=[inputs.target.ship_format], stem="trial",
                              verify=False, precisions=[precision],
                              calibration=samples.calibration,
                              options=ExportOptions(quantizer=quantizer) if quantizer is not None
                              else None)[0]
        latency = estimate_model(result.path, inputs.target, inputs.threads)[1].latency_ms
        return file_predictions(result.path, val_x), latency


def model_right(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Whether `model` gets each image of (x, y) right; it is moved to the CPU and left in
    eval mode (what the search judges it in)."""
    model = model.cpu().eval()
    with torch.no_grad():
        pred = torch.cat([model(batch).argmax(1) for batch in x.split(512)])
    return (pred == y).numpy()


def _epochs_line(epochs: dict[bool, float]) -> str:
    """The trials' fine-tuning lengths for the search's first line."""
    if epochs[True] == epochs[False]:
        return f"{epochs[True]:g} fine-tuning epochs a trial"
    return (f"{epochs[True]:g} fine-tuning epochs a trial cut from the dense model, "
            f"{epochs[False]:g} from an accepted trial's")


def _drop(v: ToleranceVerdict) -> str:
    """A verdict's drop for the progress lines: the point estimate and its bound."""
    return f"{v.drop.points:+.2f} points (95% bound {v.drop.high:+.2f})"


def _rule(reference_right: np.ndarray, max_drop: float) -> str:
    """Which figure the tolerance judges on these images, in words for the progress line."""
    if tolerance_verdict(reference_right, reference_right, max_drop).by_bound:
        return "a level passes when the 95% upper bound of its drop is within the tolerance"
    return (f"{len(reference_right)} images are too few for a 95% bound within "
            f"{max_drop:g} points, so the point estimate judges")


def _load_state(run: RunFolder) -> SearchState:
    path = run.path(SEARCH_FILE)
    if not path.is_file():
        return SearchState()
    return SearchState.from_dict(json.loads(path.read_text()))


def _save_state(run: RunFolder, state: SearchState) -> None:
    atomic_write_text(run.path(SEARCH_FILE), json.dumps(state.to_dict(), indent=1))
    run.record(run.work / SEARCH_FILE, "search", "search")
