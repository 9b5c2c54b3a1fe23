"""Build and run a research session: fleet + strategy + keep rule + scheduler, from command-line options."""

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


def run_session(opened: Opened, opts: RunOptions, on_event: Callable[..., None] | None = None) -> Summary | list[Path]:
    project, store = opened.project, opened.store
    fleet_spec = opts.fleet or project.section("fleet")["default"]
    strat_spec = opts.strategy or project.section("strategy")["name"]
    seed = opts.seed if opts.seed is not None else project.section("strategy")["seed"]
    limits = limits_from(project, opts)
    space = knob_space(project)
    from fleetlab.strategies import make_strategy

    strategy = make_strategy(strat_spec, seed=seed, project=project, settings=project.settings,
                             backfill=opts.backfill, **opts.strategy_options)
    with RunLock(project):
        tag, resuming = choose_tag(store, opts.tag)
        executor = make_fleet(opened, fleet_spec, opts)
        clock = getattr(executor, "clock", None)
        try:
            if opts.dry_run:
                return dry_run(opened, executor, strategy, space, tag, limits, opts)
            keep = make_keep_rule(project, opts.keep_rule)
            pruner = None
            if pruning(project, opts):
                from fleetlab.analysis.pruning import make_pruner

                pruner = make_pruner(project)
            stop_rule = None
            if not opts.never_stop:
                try:
                    from fleetlab.analysis.stop import StopRule
                except ImportError:
                    StopRule = None
                if StopRule is not None:
                    stop_rule = StopRule.from_options(project, opts.min_gain_per_gpu_hour)
            if on_event:
                on_event("preparing", fleet=fleet_spec, strategy=strategy.name, tag=tag, resuming=resuming)
            for message in executor.notices():  # said once, at session start (a sandbox this machine lacks)
                if on_event:
                    on_event("warning", message=message)
            executor.prepare(project.root, project.setup or None)
            sched = Scheduler(project, store, executor, strategy, clock, tag=tag, limits=limits, keep_rule=keep,
                              lookahead=opts.lookahead, pruner=pruner, on_event=on_event, seed=seed,
                              stop_rule=stop_rule)
            sched.set_space(space)
            summary = sched.run()
            return summary
        finally:
            executor.close()


def dry_run(opened: Opened, executor, strategy, space, tag: str, limits: Limits, opts: RunOptions) -> list[Path]:
    """Plan the baseline and the first wave and write their exact launch specs; launch nothing, store nothing."""
    from fleetlab.experiment import Proposal
    from fleetlab.fleet._base import RunSpec
    from fleetlab.proposals import Materializer
    from fleetlab.store.sqlite import SQLiteStore
    from fleetlab.strategies._base import Context

    project = opened.project
    out_dir = project.state_dir / "dry-run"
    m = Materializer(project, SQLiteStore(":memory:"))
    workers = executor.workers()
    base = project.read_editable()
    ctx = Context(goal=project.goal, metric=project.metric, incumbent=None, baseline_knobs=m.read_knobs(base),
                  space=space, experiments=[], workers=workers, free_workers=len(workers), now=time.time())
    props = [Proposal(description="baseline", role="baseline")] + strategy.propose(ctx, max(0, len(workers) - 1))
    specs = []
    for i, (prop, worker) in enumerate(zip(props, workers)):
        exp_id = f"dry-{i + 1:04d}"
        try:
            variant = m.build(prop, None)
        except Exception as e:  # a proposal that would be rejected is listed as such
            print(f"skipped {prop.description!r}: {e}")
            continue
        env = {"EXPERIMENT_ID": exp_id, "EXPERIMENT_DESC": prop.description,
               "FLEETLAB_TIME_BUDGET": f"{project.time_budget_s:g}", "FLEETLAB_SEED": str(i)}
        specs.append((RunSpec(experiment_id=exp_id, workdir=project.runs_dir / exp_id, command=project.command,
                              env=env, timeout_s=project.timeout_s, setup=project.setup or None,
                              description=prop.description, files=variant.files, seed=i), worker))
    paths = executor.dry_run(specs, out_dir)
    (out_dir / "plan.json").write_text(json.dumps({"tag": tag, "fleet": executor.name, "specs": [str(p) for p in paths]},
                                                  indent=2))
    return paths
