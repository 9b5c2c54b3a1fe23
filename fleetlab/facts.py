"""The one home of every derived figure: what the run summary, `status`, `results`, results.tsv, report.html,
progress.png, `analyze` and `serve` show is computed here, once, from the store.

Definitions (each used everywhere; a surface formats, it never recomputes):

- A session is one tag. Its *experiments* are its finished runs: a final state other than `cancelled` (a run the
  session stopped has no result of its variant). Queued runs of any tag are the queue the next session runs.
- An *arm* is the finished runs of one content hash in the session. Its mean is over the runs that are fair draws of
  the code: roles baseline, replicate, validate, control and confirm. The screening run that promoted a candidate was
  chosen for looking good, so it counts only when the arm has nothing else (a keep made without validation).
- The *baseline* is the arm of the session's first `baseline` run; the *incumbent* the arm of the session's current
  incumbent. Both carry mean, n, sd and a 95 % t interval of the mean.
- *gain* = baseline mean − incumbent mean for a minimised metric, the reverse for a maximised one: positive is better
  either way; `pct` is relative to |baseline mean|; `ci` is Welch's 95 % interval of that difference.
- *confirmed_gain* is the same figure from the end-of-session paired re-runs (role `confirm`) alone.
- A row's *status* is autoresearch's: `crash` for a failed run, `keep` for every run of code that was kept (the
  baseline's, a kept variant's: screening run, replicates, validation runs, controls, duplicates), else `discard` (a
  pending candidate is `discard` until its validation keeps it). `by_decision` counts the keep rule's verdicts on
  screened variants (one keep per kept change) and, apart, the measurement runs by their role (baseline, replicate,
  validate, control, confirm), so a validation run is never counted as a discard.
"""

from __future__ import annotations

import fcntl
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from fleetlab.experiment import Experiment, State, is_finite

__all__ = ["Facts", "Row", "compute", "rows", "serving", "headline", "decision_parts", "ordered_decisions",
           "incumbent_path", "fmt", "MEASURE_ROLES",
           "arm_stats", "gain_between", "is_finished"]

MEASURE_ROLES = ("baseline", "replicate", "validate", "control", "confirm")  # fair draws of their code
CONFIDENCE = 0.95
SCREENED = ("explore", "combine")  # roles whose runs are judged as variants (keep / discard / pending)
_ORDER = ("keep", "discard", "pending", "crash", *MEASURE_ROLES)  # how the headline lists counts


# -- per experiment ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One experiment as every surface shows it."""

    id: str
    tag: str
    state: str
    role: str
    status: str | None      # keep | discard | crash for a finished experiment; None while queued/running or cancelled
    decision: str | None    # the keep rule's latest verdict (keep | discard | crash | pending), None if none yet
    metric: float | None    # the final metric; a pruned run's last observed value; None without a result
    metric_observed: bool   # True when `metric` is a pruned run's last observed value, not a final one
    description: str
    content_hash: str
    parent: str | None
    hardware: str | None
    number: int
    finished_at: float | None
    memory_gb: float | None
    epochs: float | None
    training_seconds: float | None

    @property
    def finished(self) -> bool:
        return self.status is not None

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))


def _float(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def memory_gb(e: Experiment) -> float | None:
    """Peak memory in GB from whichever key the run printed (memory_gb, memory_mb or autoresearch's peak_vram_mb)."""
    for key, scale in (("memory_gb", 1.0), ("memory_mb", 1 / 1024), ("peak_vram_mb", 1 / 1024)):
        v = _float(e.extras.get(key))
        if v is not None:
            return v * scale
    return None


def _number(e: Experiment, fallback: int) -> int:
    try:
        return e.number
    except ValueError:
        return fallback


def is_finished(e: Experiment) -> bool:
    return e.state.is_final and e.state is not State.CANCELLED


def _kept_hashes(exps: Iterable[Experiment], decisions: dict) -> set[tuple[str, str]]:
    return {(e.tag, e.content_hash or e.id) for e in exps
            if decisions.get(e.id) is not None and decisions[e.id].status == "keep"}


def _row(e: Experiment, i: int, decisions: dict, kept: set[tuple[str, str]], store) -> Row:
    d = decisions.get(e.id)
    status = None
    if is_finished(e):
        if e.state.is_failure:
            status = "crash"
        elif (d is not None and d.status == "keep") or (e.tag, e.content_hash or e.id) in kept:
            status = "keep"  # the kept code: its screening run, its replicates, validation runs and duplicates
        else:
            status = "discard"
    metric, observed = (e.metric if is_finite(e.metric) else None), False
    if e.state is State.PRUNED and metric is None:
        obs = store.observations(e.id)
        if obs:
            metric, observed = float(obs[-1][1]), True
    return Row(id=e.id, tag=e.tag, state=e.state.value, role=str(e.role), status=status,
               decision=d.status if d is not None else None, metric=metric, metric_observed=observed,
               description=" ".join(e.description.split()), content_hash=e.content_hash, parent=e.parent,
               hardware=e.hardware, number=_number(e, i), finished_at=e.finished_at, memory_gb=memory_gb(e),
               epochs=_float(e.extras.get("epochs")), training_seconds=_float(e.extras.get("training_seconds")))


def rows(store, tag: str | None = None, experiments: list[Experiment] | None = None) -> list[Row]:
    """Every experiment of `tag` (None: of the project) in id order, with its status as every surface shows it."""
    exps = experiments if experiments is not None else store.experiments(tag=tag)
    decisions = store.decisions()
    kept = _kept_hashes(exps if tag is not None else store.experiments(), decisions)
    return [_row(e, i, decisions, kept, store) for i, e in enumerate(exps)]


# -- statistics -------------------------------------------------------------------------------------------------------
def _t(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + CONFIDENCE / 2, df))


def _mean_sd(xs: list[float]) -> tuple[float, float | None]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def arm_stats(arm: list[Experiment]) -> dict[str, Any] | None:
    """mean, n, sd and the 95 % interval of the mean of an arm (see the module's definition), or None if it has no
    result. `validated` says whether the mean rests on fair draws only."""
    scored = [e for e in arm if e.state is State.DONE and is_finite(e.metric)]
    fair = [e for e in scored if e.role in MEASURE_ROLES]
    use = fair or scored
    if not use:
        return None
    mean, sd = _mean_sd([float(e.metric) for e in use])
    ci = None
    if sd is not None:
        half = _t(len(use) - 1) * sd / math.sqrt(len(use))
        ci = [mean - half, mean + half]
    return {"mean": mean, "n": len(use), "sd": sd, "ci": ci, "validated": bool(fair), "runs": [e.id for e in use]}


def _signed(goal: str, base: float, inc: float) -> float:
    return base - inc if goal == "minimize" else inc - base


def gain_between(goal: str, base: dict[str, Any], inc: dict[str, Any]) -> dict[str, Any]:
    """The gain of `inc` over `base` (arm statistics): positive is better, with its % and Welch's 95 % interval."""
    g = _signed(goal, base["mean"], inc["mean"])
    pct = 100.0 * g / abs(base["mean"]) if base["mean"] else None
    ci = None
    if base["sd"] is not None and inc["sd"] is not None:
        va, vb = base["sd"] ** 2 / base["n"], inc["sd"] ** 2 / inc["n"]
        se = math.sqrt(va + vb)
        if se > 0:
            df = (va + vb) ** 2 / (va ** 2 / (base["n"] - 1) + vb ** 2 / (inc["n"] - 1))
            half = _t(max(1, int(df))) * se
        else:
            half = 0.0
        ci = [g - half, g + half]
    return {"abs": g, "pct": pct, "ci": ci}


# -- the session's facts ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Facts:
    """Every derived figure of one session (see the module docstring for each definition)."""

    tag: str | None
    metric: str
    goal: str
    session_status: str | None   # running | finished | interrupted | pending | None (no session yet)
    stop_reason: str | None
    serving: bool                # a `fleetlab run` holds this project's run lock now
    started_at: float | None
    ended_at: float | None       # None while serving
    baseline: dict[str, Any] | None
    incumbent: dict[str, Any] | None
    gain: dict[str, Any] | None
    confirmed_gain: dict[str, Any] | None
    experiments: int             # finished experiments of the session (final state, not cancelled)
    # by_state / by_decision (keep, discard, crash, pending for screened variants; the role for measurement runs:
    # baseline, replicate, validate, control, confirm) / by_role: finished experiments;
    # queued: this session's queued runs (plus runs a gone orchestrator left running); running: 0 unless serving
    counts: dict[str, Any]
    queue_depth: int             # queued runs of every tag: what runs next
    workers: int
    idle_workers: int | None     # None unless serving
    wall_hours: float
    experiments_per_hour: float | None
    busy_s: float
    available_s: float
    utilization: float | None
    training_s: float | None
    training_share: float | None
    gpu_hours: float
    gpu_hours_busy: float
    cost_usd: float
    hours_to_best: float | None
    # the stop rule's view: expected further gain per GPU-hour from a power law fitted to the incumbents' gains
    # ({gain_per_gpu_hour, exponent, improvements}); None before two improvements
    projection: dict[str, Any] | None
    noise_sigma: float | None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become None, tuples lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def serving(project) -> bool:
    """Whether a `fleetlab run` holds the project's run lock now. The lock is read, never taken, so a session that
    starts at this moment is not refused: /proc/locks lists every flock on the lock file's inode (Linux); elsewhere
    the pid written into the lock file is asked whether it still lives."""
    path = Path(project.state_dir) / "run.lock"
    try:
        st = path.stat()
    except OSError:
        return False
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return _pid_alive(path)
    inode = f":{st.st_ino} "  # the field is MAJOR:MINOR:INODE in hex:hex:decimal
    return any("FLOCK" in line and inode in line for line in text.splitlines())


def _pid_alive(path: Path) -> bool:
    try:
        pid = int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        with open(path) as f:  # a free lock means the pid in it is stale
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def _latest_tag(store) -> str | None:
    sessions = store.sessions()
    return sessions[-1]["tag"] if sessions else None


def drift_warnings(project, exps: list[Experiment], baseline_id: str | None, incumbent_id: str | None) -> list[str]:
    """Sentences on drift: the baseline's and incumbent's re-runs moved in metric or throughput by more than their
    noise floor (fleetlab.analysis.drift's estimate; nothing to say before an arm has re-runs)."""
    from fleetlab.analysis.drift import drift_warnings as estimate

    if baseline_id is None:
        return []
    return list(estimate(exps, project.goal, baseline_id, incumbent_id))


def _data_warnings(rs: list[Row]) -> list[str]:
    repeated = [r for r in rs if r.finished and r.epochs is not None and r.epochs > 1]
    if not repeated:
        return []
    worst = max(repeated, key=lambda r: r.epochs)
    return [f"{len(repeated)} run(s) saw their training data more than once (up to {worst.epochs:g} epochs, "
            f"{worst.id}): their metric partly measures memorisation; use more data or a shorter budget"]


def compute(project, store, tag: str | None = None, now: float | None = None) -> Facts:
    """The facts of session `tag` (default: the latest session) as of `now` (default: the session's end if it is
    over, else the current time)."""
    tag = tag or _latest_tag(store)
    sess = (store.session(tag) if tag else None) or {}
    exps = store.experiments(tag=tag) if tag else []
    rs = rows(store, tag, exps) if tag else []
    goal = project.goal
    live = serving(project) and sess.get("status") == "running"
    finished = [e for e in exps if is_finished(e)]

    # baseline and incumbent arms
    by_hash: dict[str, list[Experiment]] = {}
    for e in finished:
        by_hash.setdefault(e.content_hash or e.id, []).append(e)
    base_exp = next((e for e in exps if e.role == "baseline"), None)
    baseline = incumbent = gain = None
    if base_exp is not None:
        st = arm_stats(by_hash.get(base_exp.content_hash or base_exp.id, []))
        if st is not None:
            baseline = {"id": base_exp.id, "content_hash": base_exp.content_hash, **st}
    inc_id = store.incumbent(tag) if tag else None
    if inc_id is not None:
        inc_exp = store.get(inc_id)
        st = arm_stats(by_hash.get(inc_exp.content_hash or inc_exp.id, []))
        if st is not None:
            incumbent = {"id": inc_id, "description": inc_exp.description, "content_hash": inc_exp.content_hash,
                         "is_baseline": base_exp is not None and inc_exp.content_hash == base_exp.content_hash, **st}
    if baseline is not None and incumbent is not None:
        # the same code on both sides is no comparison: a gain of exactly zero, without an interval
        gain = ({"abs": 0.0, "pct": 0.0, "ci": None} if incumbent["is_baseline"]
                else gain_between(goal, baseline, incumbent))
    confirmed = _confirmed(goal, finished, baseline, incumbent)

    # counts
    states: dict[str, int] = {}
    decisions: dict[str, int] = {}
    roles: dict[str, int] = {}
    for r in rs:
        if not r.finished:
            continue
        states[r.state] = states.get(r.state, 0) + 1
        # a screened variant counts by its verdict; a measurement of known code (the baseline's runs, replicates,
        # validations, controls, confirmations) by what it measured, never as a "discard"
        verdict = (r.decision or r.status) if r.role in SCREENED or r.status == "crash" else r.role
        decisions[verdict] = decisions.get(verdict, 0) + 1
        roles[r.role] = roles.get(r.role, 0) + 1
    running = sum(e.state is State.RUNNING for e in exps)
    stale = 0 if live else running
    queued = sum(e.state is State.QUEUED for e in exps) + stale
    queue_depth = len(store.experiments(states=[State.QUEUED])) + stale

    # time and accounting
    started = sess.get("started_at")
    if started is None and exps:
        started = min(e.queued_at for e in exps)
    ends = [e.finished_at for e in finished if e.finished_at is not None]
    if live:
        if now is None:  # a simulated fleet's session runs on its virtual clock: its latest event is its now
            virtual = str(sess.get("executor") or "").startswith("sim")
            now = max([sess.get("updated_at") or 0.0, *ends]) if virtual else time.time()
        ended = None
    else:
        ended = max([sess.get("updated_at") or 0.0, *ends]) if (ends or sess.get("updated_at")) else started
        now = ended if now is None else now
    wall_h = max(0.0, ((now or 0.0) - (started or now or 0.0)) / 3600.0)
    workers_seen = {e.worker for e in exps if e.worker}
    workers = int(sess.get("workers") or len(workers_seen))
    busy = float(sess.get("busy_s") or 0.0)
    available = float(sess.get("available_s") or 0.0)
    if live:  # the record is a checkpoint: add what ran and what was held since
        busy += sum(max(0.0, now - e.started_at) for e in exps if e.state is State.RUNNING and e.started_at)
        updated = sess.get("updated_at") or started or now
        available += workers * max(0.0, now - updated)
    reported = [r for r in rs if r.finished and r.training_seconds is not None]
    training = sum(r.training_seconds for r in reported) if reported else None
    rt = {e.id: e.runtime_s for e in finished}
    reported_busy = sum(rt.get(r.id) or 0.0 for r in reported)
    share = training / reported_busy if training is not None and reported_busy > 0 else None
    hist = store.incumbent_history(tag) if tag else []
    best_at = hist[-1][1] if hist else None

    from fleetlab.analysis.noise import measurements_from

    sigma = measurements_from(finished, MEASURE_ROLES).sigma()
    warnings = (_data_warnings(rs) + _worker_warnings(sess)
                + drift_warnings(project, finished, base_exp.id if base_exp else None, inc_id))
    if stale:
        warnings.append(f"{stale} run(s) were left running by a `fleetlab run` that is gone: the next `fleetlab run` "
                        "collects them or runs them again")
    return Facts(
        tag=tag, metric=project.metric, goal=goal, session_status=sess.get("status"),
        stop_reason=sess.get("stop_reason"), serving=live, started_at=started, ended_at=ended,
        baseline=baseline, incumbent=incumbent, gain=gain, confirmed_gain=confirmed,
        experiments=len(finished),
        counts={"by_state": states, "by_decision": decisions, "by_role": roles, "queued": queued,
                "running": running if live else 0, "cancelled": sum(e.state is State.CANCELLED for e in exps)},
        queue_depth=queue_depth, workers=workers, idle_workers=max(0, workers - running) if live else None,
        wall_hours=wall_h, experiments_per_hour=len(finished) / wall_h if wall_h > 0 else None,
        busy_s=busy, available_s=available, utilization=busy / available if available > 0 else None,
        training_s=training, training_share=share, gpu_hours=available / 3600.0, gpu_hours_busy=busy / 3600.0,
        cost_usd=float(sess.get("cost_usd") or 0.0),
        hours_to_best=(best_at - started) / 3600.0 if best_at is not None and started is not None else None,
        projection=_projection(goal, store, tag, baseline, started, now, available / 3600.0),
        noise_sigma=sigma, warnings=warnings)


def _projection(goal, store, tag, baseline, started, now, gpu_hours) -> dict[str, Any] | None:
    """fleetlab.analysis.stop's estimate on this session's incumbents: each one's validated gain over the baseline
    at the GPU-hours held when it took over (held hours taken as spread evenly over the wall-clock)."""
    from fleetlab.analysis.stop import expected_gain_rate

    if baseline is None or started is None or not now or now <= started or gpu_hours <= 0:
        return None
    traj: list[tuple[float, float]] = []
    for p in incumbent_path(store, tag):
        g = _signed(goal, baseline["mean"], p["mean"])
        if g > (traj[-1][1] if traj else 0.0):
            traj.append((gpu_hours * (p["at"] - started) / (now - started), g))
    est = expected_gain_rate(traj, gpu_hours) if len(traj) >= 2 else None
    if est is None:
        return None
    return {"gain_per_gpu_hour": est["rate"], "exponent": est["b"], "improvements": len(traj)}


def _confirmed(goal: str, finished: list[Experiment], baseline, incumbent) -> dict[str, Any] | None:
    """The gain from the end-of-session paired re-runs (role confirm) of the baseline's and the incumbent's code."""
    if baseline is None or incumbent is None or incumbent.get("is_baseline"):
        return None
    from fleetlab.analysis.confirm import confirmed_gain

    return confirmed_gain(finished, baseline, incumbent, goal)  # paired: a pair's difference cancels drift


def _worker_warnings(sess: dict[str, Any]) -> list[str]:
    lost = sess.get("workers_lost") or []
    if isinstance(lost, (int, float)):
        return [f"{int(lost)} worker(s) left the fleet during the session"] if lost else []
    return [f"worker lost: {why}" for why in lost]


def incumbent_path(store, tag: str | None) -> list[dict[str, Any]]:
    """Each incumbent the session had, in order, with its arm's statistics as the store holds them now: the line of
    the progress plot ({id, number, at, mean, n, sd, ci, validated})."""
    if not tag:
        return []
    exps = store.experiments(tag=tag)
    arms: dict[str, list[Experiment]] = {}
    for e in exps:
        if is_finished(e):
            arms.setdefault(e.content_hash or e.id, []).append(e)
    by_id = {e.id: e for e in exps}
    out = []
    for exp_id, at in store.incumbent_history(tag):
        e = by_id.get(exp_id) or store.get(exp_id)
        st = arm_stats(arms.get(e.content_hash or e.id, []))
        if st is not None and (not out or out[-1]["id"] != exp_id):
            out.append({"id": exp_id, "number": _number(e, 0), "at": at, **st})
    return out


def fmt(x: float | None, spec: str = ".6g") -> str:
    """How every surface writes a figure (the same digits everywhere, a dash for none)."""
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def ordered_decisions(by_decision: dict[str, int]) -> list[tuple[str, int]]:
    """`by_decision` in the order every surface lists it: keep, discard, pending, crash, then the measurement runs."""
    return sorted(by_decision.items(), key=lambda kv: _ORDER.index(kv[0]) if kv[0] in _ORDER else len(_ORDER))


def decision_parts(by_decision: dict[str, int]) -> list[str]:
    """"1 keep", "3 discard", ...: `by_decision` as the headline, `status` and `analyze` print it."""
    return [f"{n} {k}" for k, n in ordered_decisions(by_decision)]


def headline(f: Facts) -> list[str]:
    """The session in a few lines, the same on the run summary, quickstart, `status` and the report."""
    c = f.counts
    parts = decision_parts(c["by_decision"])
    lines = [f"session {f.tag or '-'}: {f.experiments} experiments finished"
             + (f" ({', '.join(parts)})" if parts else "")
             + (f"; {c['running']} running" if c["running"] else "")
             + (f"; {f.queue_depth} queued" if f.queue_depth else "")
             + (f"; {f.stop_reason}" if f.stop_reason and not f.serving else "")]
    b, i, g = f.baseline, f.incumbent, f.gain
    if b is not None:
        lines.append(f"baseline {f.metric} {fmt(b['mean'])} (n={b['n']}, {b['id']})")
    if i is not None and not i["is_baseline"]:
        lines.append(f"incumbent {i['id']} {f.metric} {fmt(i['mean'])} (n={i['n']}"
                     f"{'' if i['validated'] else ', not validated'}): {i['description']}")
    if g is not None and i is not None and not i["is_baseline"]:
        ci = f", 95% CI [{fmt(g['ci'][0], '+.4g')}, {fmt(g['ci'][1], '+.4g')}]" if g["ci"] else ""
        lines.append(f"gain {fmt(g['abs'], '+.6g')} ({fmt(g['pct'], '+.2f')}%{ci}); positive is better")
    elif b is not None:
        lines.append("no variant kept yet: the incumbent is the baseline")
    if f.confirmed_gain is not None:
        cg = f.confirmed_gain
        ci = f", 95% CI [{fmt(cg['ci'][0], '+.4g')}, {fmt(cg['ci'][1], '+.4g')}]" if cg["ci"] else ""
        lines.append(f"confirmed gain {fmt(cg['abs'], '+.6g')} ({fmt(cg['pct'], '+.2f')}%{ci}) from "
                     f"{cg['baseline_n']}+{cg['incumbent_n']} paired re-runs")
    share = f", training {f.training_share:.0%} of it" if f.training_share is not None else ""
    util = f"{f.utilization:.0%}" if f.utilization is not None else "-"
    lines.append(f"{f.wall_hours:.3f} h wall, {fmt(f.experiments_per_hour, '.1f')} experiments/h, "
                 f"{f.gpu_hours:.3f} GPU-h (busy {util}{share}), ${f.cost_usd:.2f}")
    lines += [f"warning: {w}" for w in f.warnings]
    return lines
