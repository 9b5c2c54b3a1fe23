"""The parts of the research-validity keep rule that make its comparisons like with like (a mixin of
`ValidityKeepRule`; the model is in fleetlab.analysis.drift):

- arms: runs of identical code (same content hash) are one arm, answered with one decision;
- controls: re-runs of the incumbent interleaved with a candidate's validation runs, so the verdict compares runs
  made close in time, with the class's trend (when one is seen) moving what is left of their time difference;
- the parent: a candidate that lost to an incumbent which moved while it was queued is still tested against its
  parent, recorded as its improvement, and its change offered on top of the incumbent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleetlab.analysis._base import SessionView as View
from fleetlab.analysis.drift import adjusted_gain, clamp, run_time
from fleetlab.experiment import Decision, Experiment, Proposal

SCREEN_ROLES = ("explore", "combine")
VAL = "#validation"  # validation runs are kept apart from the variant's fresh replicates (see `reference`)


@dataclass
class _Pending:
    cand: str
    key: str
    parent: str | None
    want: int
    simplify: bool
    screen: dict[str, Any]
    hardware: dict[str, int] = field(default_factory=dict)  # validation runs per class
    ended: int = 0
    rounds: int = 0  # validation rounds added after an inconclusive verdict
    run_h: float = 0.0  # how long one run takes (hours): the scale of "close in time"
    asked: bool = False  # controls were asked for at the verdict
    pooled: bool = False  # an arm submitted together (replicates, duplicates): decided on all its runs, unscreened
    members: list[str] = field(default_factory=list)  # other runs of the same code, answered with the verdict


class ArmsAndTime:
    """Arms, controls and the parent test; state lives in ValidityKeepRule.__init__."""

    # == arms: runs of identical code are one arm, answered with one decision ======================================
    def _index(self, view: View) -> None:
        exps = view.experiments()
        for e in exps[self._scan:]:
            if e.role in SCREEN_ROLES:
                self._hash_ids.setdefault(e.content_hash or e.id, []).append(e.id)
        self._scan = len(exps)

    def _arm(self, exp: Experiment, key: str, hw: str, x: float, inc: Experiment, view: View) -> Decision | None:
        """The decision for a screening run whose code already has runs (None: screen it as usual).

        A run of the incumbent's code joins the incumbent's arm (a fresh, unselected draw). A run of code that was
        screened already is answered with that arm's decision, and its result joins the arm's validation runs. A run
        submitted with other runs of its code (`submit --replicates N`, duplicate submissions still queued) waits for
        them; the arm is then decided once, on all its runs, by the validation test (none of them was selected)."""
        nums: dict[str, Any] = {"metric": x, "hardware": hw}
        if key == (inc.content_hash or inc.id):
            self._add(key, hw, x, exp)
            return Decision("discard", f"same code as the incumbent {inc.id}: pooled with its runs", nums)
        self._index(view)
        first = self._arm_first.get(key)
        if first is not None and first != exp.id:
            nums["arm"] = first
            p = self._pending.get(first) or next((w for w in self._waiting if w.cand == first), None)
            if p is not None:
                p.members.append(exp.id)
                self._add(key + VAL, hw, x, exp)
                if first in self._pending:
                    if not p.pooled:
                        p.want += 1
                    self._validation_ended(p, hw, view, member=True)
                else:
                    p.hardware[hw] = p.hardware.get(hw, 0) + 1
                return Decision("pending", f"same code as {first}: pooled with its arm, decided with it", nums)
            done = self._arm_final.get(first)
            if done is not None:
                self._add(key + VAL, hw, x, exp)
                return Decision("discard", f"same code as {first}, already decided ({done.status}): {done.reason}",
                                {**done.numbers, **nums})
            return None
        self._arm_first[key] = exp.id
        siblings = [i for i in self._hash_ids.get(key, ()) if i != exp.id and not view.get(i).state.is_final]
        if not siblings:
            return None
        p = _Pending(exp.id, key, exp.parent, 1 + len(siblings), False, {"pooled_runs": 1 + len(siblings)},
                     run_h=(exp.runtime_s or 0.0) / 3600.0, pooled=True)
        self._pending[exp.id] = p
        self._add(key + VAL, hw, x, exp)
        self._validation_ended(p, hw, view, member=True)
        return Decision("pending", f"one of {p.want} runs of the same code: decided on all of them together",
                        {**nums, "pooled_runs": p.want})

    def _drift_shift(self, inc: Experiment, hw: str, exp: Experiment, how: str) -> float:
        """How far the class's trend (when one is seen) moved the metric between the incumbent's runs on `hw` and
        this run: its reference is taken to this run's time."""
        beta, t = self.tl.seen(hw), run_time(exp)
        arm = self.tl.arms.get(inc.content_hash or inc.id, {}).get(hw)
        if beta is None or t is None or arm is None or not how.startswith("same class") or "validation" in how:
            return 0.0
        return beta * clamp(t - arm.mt, self.tl.reach(hw))

    def _queue_controls(self, inc: Experiment, hw: str | None, now_h: float | None, run_h: float,
                        want: int | None = None) -> None:
        """Re-runs of the incumbent interleaved with a candidate's validation runs, so the verdict compares runs made
        under the same conditions. One control while no drift is seen (it keeps the trend measured), R once one is;
        controls already asked for, and the incumbent's runs of the last two run lengths, count."""
        key = inc.content_hash or inc.id
        hw = hw if self.mixed else None
        if want is None:
            want = self.replicates if self.tl.seen(hw or self._only_class()) is not None else 1
        have = self._ctl.get(key, 0)
        arm = self.tl.arms.get(key, {}).get(hw or self._only_class())
        if arm is not None and now_h is not None:
            have += sum(1 for t, _ in arm.runs[-2 * self.replicates:] if t >= now_h - 2 * run_h)
        if want - have <= 0:
            return
        self._ctl[key] = self._ctl.get(key, 0) + want - have
        tier = "validate" if (self.mixed or self.configured_tiers) and hw is None else None
        self._out.append(Proposal(description=f"control: re-run incumbent {inc.id}" + (f" on {hw}" if hw else ""),
                                  parent=inc.id, role="control", replicates=want - have, hardware=hw, tier=tier,
                                  strategy="validity"))

    def _heartbeat(self, inc: Experiment, hw: str, exp: Experiment) -> None:
        """One control of the incumbent after every `control_every` screening runs on a class without a run of the
        incumbent there: drift that no validation happens to reveal (every run since looked worse, so none was
        promoted) is measured all the same, and the screen's reference follows it."""
        if not self.control_every:
            return
        self._since[hw] = self._since.get(hw, 0) + 1
        if self._since[hw] >= self.control_every and self._ctl.get(inc.content_hash or inc.id, 0) == 0:
            self._since[hw] = 0
            self._queue_controls(inc, hw, None, (exp.runtime_s or 0.0) / 3600.0, want=1)

    def _floor(self, hw: str) -> float | None:
        """The class's noise floor for the screen: the residual σ around the class's trend once one is seen (a drift
        inflates the spread of an arm's runs, not the noise), else the per-class σ."""
        tr = self.tl.trend(hw) if self.tl.seen(hw) is not None else None
        return tr[2] if tr is not None and tr[3] >= 2 and tr[2] > 0 else self.sigma(hw)

    def _only_class(self) -> str:
        return self._order[-1] if self._order else next(iter(self.meas.classes()), "unknown")

    def _against_parent(self, p: _Pending, d: Decision, view: View) -> Decision:
        """A candidate that lost to an incumbent which replaced its parent while it was queued may still beat its
        parent: then it is recorded as an improvement of its parent, and its change is offered on top of the
        incumbent (and merged with the parent's other improvements) instead of being lost."""
        inc = view.incumbent()
        vhw = d.numbers.get("validated_on")
        if inc is None or vhw is None or p.parent == d.numbers.get("inc"):
            return d
        try:
            parent, cand = view.get(p.parent), view.get(p.cand)
        except Exception:
            return d
        if parent.content_hash and parent.content_hash == inc.content_hash:
            return d  # the incumbent is the parent's own code (a re-run of it): the verdict above already judged that
        res = self._close_in_time(p, parent, vhw, view.goal, force=True, window=False)
        if res is None or isinstance(res, str):
            return d
        r, how = res
        if not (r["p"] < self.alpha and r["gain"] > self.min_effect):
            return d
        props = self.comb.improves(p.parent, p.cand, view, kept=False)
        offer = self.comb.onto_incumbent(parent, cand, inc, view)
        self._out.extend(props + ([offer] if offer else []))
        nums = {**d.numbers, "improves_parent": {"parent": parent.id, "gain": r["gain"], "p": r["p"], "n": r["n"],
                                                 "parent_n": r["inc_n"], "compared": how},
                "offered": [x.description for x in props + ([offer] if offer else [])]}
        why = (f"{d.reason}; it improves its parent {parent.id} by {r['gain']:.4g} (p={r['p']:.3g}): recorded as an "
               f"improvement of {parent.id}" + (f", its change offered on top of {inc.id}" if offer else ""))
        return Decision(d.status, why, nums)

    def _close_in_time(self, p: _Pending, inc: Experiment, vhw: str, goal: str, force: bool,
                       window: bool = True) -> tuple[dict[str, Any], str] | str | None:
        """The candidate's validation runs on `vhw` against `inc`'s runs there, both taken to the same time.

        Only the incumbent's runs close in time to the validation runs count (within two run lengths, or the
        validation runs' own span): "wait" while fewer than two are in and controls are on their way (R are asked
        for once); every run of its arm only when they never come. Once a trend is seen on the class, it moves what
        is left of their time difference. None: fewer than two runs a side (the per-class statistics decide)."""
        cand = self.tl.runs(p.key + VAL, vhw)
        ikey = inc.content_hash or inc.id
        runs = self.tl.runs(ikey, vhw)
        if len(cand) < 2 or len(runs) < 2 or len(cand) < sum(p.hardware.values()):
            return None  # validation runs on several classes: the hardware-normalised statistics decide
        seen = self.tl.seen(vhw)
        how = "same class"
        lo, hi = min(t for t, _ in cand), max(t for t, _ in cand)
        w = max(hi - lo, 2 * p.run_h)
        local = [r for r in runs if lo - w <= r[0] <= hi + w]
        if window:  # a trend too small to be seen can still be as large as the gain: close in time, always
            if len(local) >= 2:
                runs, how = local, "same class, controls close in time"
            elif not p.asked:  # asked even when forced: the controls' arrival retries the verdict
                p.asked = True
                self._queue_controls(inc, vhw, hi, p.run_h, want=self.replicates)
                return "wait"
            elif not force and self._ctl.get(ikey, 0) > 0:
                return "wait"
        if seen is not None:
            how += ", drift-adjusted"
        r = adjusted_gain(cand, runs, goal, self.tl.trend(vhw) if seen is not None else None,
                          self.meas.sigma(vhw), self.meas.df(vhw), reach=self.tl.reach(vhw))
        return (r, how) if r.get("gain") is not None else None

    def confirmation(self, view: View, pairs: int | None = None) -> list[Proposal]:
        """The end-of-session confirmation the loop queues (and `fleetlab confirm`): the baseline and the incumbent
        re-run interleaved, role confirm; nothing when the incumbent is still the baseline's code or was confirmed."""
        from fleetlab.analysis.confirm import confirmation

        return confirmation(view, pairs or self.replicates)
