"""The composition root: a research session (fleet + strategy + keep rule + pruner + stop rule + scheduler) built
from a project and command-line options, for `fleetlab run`, `--dry-run`, `fleetlab bench` and quickstart."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fleetlab.api import Opened, RunLock, choose_tag, knob_space, make_keep_rule
from fleetlab.errors import ConfigError
from fleetlab.scheduler import Limits, Scheduler, Summary


@dataclass
class RunOptions:
    fleet: str | None = None
    strategy: str | None = None
    tag: str | None = None
    max_experiments: int | None = None
    max_hours: float | None = None
    max_gpu_hours: float | None = None
    max_cost: float | None = None
    target: float | None = None
    min_gain_per_gpu_hour: float | None = None
    never_stop: bool = False
    seed: int | None = None
    lookahead: int | None = None
    keep_rule: str = "auto"
    dry_run: bool = False
    surface: str | None = None
    prune: bool | None = None  # None: [prune] enabled (default on)
    confirm: str | None = "end"  # the final confirmation: "end" (before stopping), "only" (`fleetlab confirm`), None
    backfill: str | None = None  # a strategy for workers that would otherwise idle (strategies/backfill.py)
    strategy_options: dict[str, Any] = field(default_factory=dict)
    executor_options: dict[str, Any] = field(default_factory=dict)


def limits_from(project, opts: RunOptions) -> Limits:
    stop = project.section("stop")

    def pick(cli, key):
        return cli if cli is not None else (stop[key] or 0)

    target = opts.target if opts.target is not None else stop["target"]
    if target is not None and isinstance(target, float) and math.isnan(target):
        target = None
    lim = Limits(max_experiments=int(pick(opts.max_experiments, "max_experiments")),
                 max_hours=float(pick(opts.max_hours, "max_hours")),
                 max_gpu_hours=float(pick(opts.max_gpu_hours, "max_gpu_hours")),
                 max_cost=float(pick(opts.max_cost, "max_cost")), target=target)
    for name in ("max_experiments", "max_hours", "max_gpu_hours", "max_cost"):
        if getattr(lim, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} cannot be negative", key=name)
    return lim


def preflight(project, opts: RunOptions) -> None:
    """What `fleetlab run` checks before anything is written (no .fleetlab/, no rows): the limits, the tag and git."""
    from fleetlab.api import check_tag

    for flag in ("lookahead", "max_hours", "max_gpu_hours", "max_cost", "target", "min_gain_per_gpu_hour"):
        value = getattr(opts, flag)
        name = "--" + flag.replace("_", "-")
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, not {value!r}", key=flag)
        if value is not None and value < 0 and flag != "target":
            raise ConfigError(f"{name} cannot be negative", key=flag)
    limits_from(project, opts)
    if opts.tag:
        check_tag(opts.tag)
    if not opts.dry_run:
        project.check_git()


def pruning(project, opts: RunOptions) -> bool:
    """Whether runs are stopped early: `--prune`/`--no-prune`, else `[prune] enabled` (default on)."""
    return bool(opts.prune if opts.prune is not None else project.section("prune")["enabled"])


def make_fleet(opened: Opened, spec: str, opts: RunOptions, clock=None):
    from fleetlab.fleet import make_executor

    project = opened.project
    fleet_cfg = project.section("fleet")
    scheme = spec.partition(":")[0].strip().lower()
    kw: dict[str, Any]
    if scheme == "local":
        kw = {"threads_per_slot": fleet_cfg["threads_per_slot"], "sandbox": project.section("sandbox")}
    elif scheme == "sim":
        from fleetlab.bench.surfaces import load_surface
        from fleetlab.clock import VirtualClock

        kw = {"surface": load_surface(opts.surface or "autoresearch"), "clock": clock or VirtualClock(),
              "prices": fleet_cfg["prices"] or None,
              "wake_on_progress": pruning(project, opts)}  # the scheduler looks at each progress point to prune
    else:
        kw = {"project": project, "settings": fleet_cfg}
    kw.update(opts.executor_options)
    return make_executor(spec, project.root, **kw)


def build_scheduler(project, store, executor, opts: RunOptions, *, tag: str, strategy=None, keep_rule=None,
                    on_event: Callable[..., None] | None = None, git: bool = True, export_tsv: bool = True,
                    record_progress: bool = True) -> Scheduler:
    """The one composition root: a session's parts from the project and the options, wired into a Scheduler.
    `fleetlab run`, `--dry-run`, `fleetlab bench` and quickstart all come through here; the bench passes its own
    keep rule (the truth oracle) and leaves git and results.tsv out of its throwaway projects."""
    limits = limits_from(project, opts)
    seed = session_seed(project, opts)
    if strategy is None:
        strategy = make_session_strategy(project, opts)
    if keep_rule is None:
        keep_rule = make_keep_rule(project, opts.keep_rule)
    pruner = None
    if pruning(project, opts):
        from fleetlab.analysis.pruning import make_pruner

        pruner = make_pruner(project)
    stop_rule = None
    if not opts.never_stop:
        from fleetlab.analysis.stop import StopRule

        stop_rule = StopRule.from_options(project, opts.min_gain_per_gpu_hour)
    sched = Scheduler(project, store, executor, strategy, executor.clock, tag=tag, limits=limits, keep_rule=keep_rule,
                      lookahead=opts.lookahead, pruner=pruner, on_event=on_event, seed=seed, stop_rule=stop_rule,
                      git=git, export_tsv=export_tsv, record_progress=record_progress, confirm=opts.confirm)
    sched.set_space(knob_space(project))
    return sched


def session_seed(project, opts: RunOptions) -> int:
    return opts.seed if opts.seed is not None else project.section("strategy")["seed"]


def make_session_strategy(project, opts: RunOptions):
    from fleetlab.strategies import make_strategy

    return make_strategy(opts.strategy or project.section("strategy")["name"], seed=session_seed(project, opts),
                         project=project, settings=project.settings, backfill=opts.backfill, **opts.strategy_options)


def run_session(opened: Opened, opts: RunOptions, on_event: Callable[..., None] | None = None) -> Summary | list[Path]:
    project, store = opened.project, opened.store
    fleet_spec = opts.fleet or project.section("fleet")["default"]
    limits_from(project, opts)  # bad limits are refused before anything starts
    strategy = make_session_strategy(project, opts)
    with RunLock(project):
        tag, resuming = choose_tag(store, opts.tag)
        executor = make_fleet(opened, fleet_spec, opts)
        try:
            if opts.dry_run:
                return dry_run(project, executor, strategy, tag)
            sched = build_scheduler(project, store, executor, opts, tag=tag, strategy=strategy, on_event=on_event)
            if on_event:
                on_event("preparing", fleet=fleet_spec, strategy=strategy.name, tag=tag, resuming=resuming)
            for message in executor.notices():  # said once, at session start (a sandbox this machine lacks)
                if on_event:
                    on_event("warning", message=message)
            executor.prepare(project.root, project.setup or None)
            return sched.run()
        finally:
            executor.close()


def dry_run(project, executor, strategy, tag: str) -> list[Path]:
    """Plan the baseline and the first wave and write their exact launch specs (built as dispatch builds them);
    launch nothing, store nothing."""
    from fleetlab.experiment import Proposal, Role
    from fleetlab.ledger import StoreView
    from fleetlab.proposals import Materializer
    from fleetlab.scheduler import run_spec
    from fleetlab.store.sqlite import SQLiteStore
    from fleetlab.strategies._base import Context

    out_dir = project.state_dir / "dry-run"
    scratch = SQLiteStore(":memory:")
    m = Materializer(project, scratch)
    workers = executor.workers()
    ctx = Context(goal=project.goal, metric=project.metric, incumbent=None,
                  baseline_knobs=m.read_knobs(project.read_editable()), space=knob_space(project), experiments=[],
                  workers=workers, free_workers=len(workers), now=time.time(), view=StoreView(scratch, project.goal),
                  materializer=m, tag=tag)
    props = [Proposal(description="baseline", role=Role.BASELINE)] + strategy.propose(ctx, max(0, len(workers) - 1))
    specs = []
    for i, (prop, worker) in enumerate(zip(props, workers)):
        try:
            variant = m.build(prop, None)
        except Exception as e:  # a proposal that would be rejected is listed as such
            print(f"skipped {prop.description!r}: {e}")
            continue
        specs.append((run_spec(project, f"dry-{i + 1:04d}", prop.description, i, variant.files), worker))
    paths = executor.dry_run(specs, out_dir)
    (out_dir / "plan.json").write_text(json.dumps({"tag": tag, "fleet": executor.name, "specs": [str(p) for p in paths]},
                                                  indent=2))
    return paths
