"""The `fleetlab` command. Thin: parses, calls the library (api.py, session.py, ...), prints.

Every command takes `-C DIR` (default: the current directory) and `--json` where its output is data. Bad input is one
sentence on stderr and a non-zero exit, never a traceback. Heavy libraries are imported inside the commands.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

EXIT_ERROR = 2


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# == commands ======================================================================================================
def cmd_init(a) -> int:
    if a.adopt:
        from fleetlab.adopt import adopt

        path = adopt(Path(a.C or a.dir or "."))
        print(f"wrote {path}; next: fleetlab run -C {path.parent}")
        return 0
    if not a.dir:
        from fleetlab.errors import ConfigError

        raise ConfigError("fleetlab init needs a directory (or --adopt inside an autoresearch checkout)")
    from fleetlab.templates import write_template

    dest = write_template(a.template, Path(a.dir), force=a.force)
    print(f"wrote the {a.template} template to {dest} (a git repository); next:\n  cd {dest} && fleetlab run")
    return 0


class _Printer:
    """Turns scheduler events into one line each."""

    def __init__(self, console, metric: str, quiet: bool = False):
        self.c, self.metric, self.quiet = console, metric, quiet

    def __call__(self, kind: str, **info: Any) -> None:
        from fleetlab.api import fmt_metric

        c = self.c
        if kind == "preparing":
            verb = "resuming" if info["resuming"] else "starting"
            c.print(f"[bold]{verb} session {info['tag']}[/] on {info['fleet']} with strategy {info['strategy']}")
        elif kind == "started":
            hw: dict[str, int] = {}
            for w in info["workers"]:
                hw[w.hardware] = hw.get(w.hardware, 0) + 1
            c.print(f"fleet: {', '.join(f'{n}x {h}' for h, n in hw.items())}")
        elif kind == "finished" and not self.quiet:
            e, d = info["exp"], info["decision"]
            color = {"keep": "green", "discard": "white", "crash": "red", "pending": "yellow"}.get(d.status, "white")
            # a screening run shows its decision; a measurement of known code (baseline, replicate, validation,
            # control, confirmation) shows its role, as the results and the report do
            status = d.status if e.role in ("explore", "combine") or d.status == "crash" else e.role
            c.print(f"{e.id} [{color}]{status:9s}[/] {e.state.value:9s} {self.metric}={fmt_metric(e.metric)} "
                    f"on {e.hardware or '-'}  {e.description[:70]}")
        elif kind == "decision" and not self.quiet:
            e, d = info["exp"], info["decision"]
            c.print(f"{e.id} [bold]{d.status}[/] after validation: {d.reason}")
        elif kind == "rejected" and not self.quiet:
            c.print(f"[yellow]rejected[/] {info['proposal'].description[:60]!r}: {info['reason']}")
        elif kind in ("requeued", "reattached") and not self.quiet:
            c.print(f"{info['exp'].id} {kind}{': ' + info['reason'] if info.get('reason') else ''}")
        elif kind == "worker_removed":
            c.print(f"[red]worker {info['worker'].id} taken out of the fleet[/]: {info['reason']}")
        elif kind == "warning":
            c.print(f"[yellow]warning[/]: {info['message']}")
        elif kind == "stopped":
            c.print(f"stopped: {info['reason']}")


def _run_options(a):
    from fleetlab.session import RunOptions

    so: dict[str, Any] = {}
    for k in ("llm_provider", "llm_model", "llm_base_url", "max_llm_cost", "agents"):
        v = getattr(a, k, None)
        if v is not None:
            so[k] = v
    eo: dict[str, Any] = {}
    if getattr(a, "keep_clusters", False):
        eo["keep_clusters"] = True
    return RunOptions(fleet=a.fleet, strategy=a.strategy, tag=a.tag, max_experiments=a.max_experiments,
                      max_hours=a.max_hours, max_gpu_hours=a.max_gpu_hours, max_cost=a.max_cost, target=a.target,
                      min_gain_per_gpu_hour=a.min_gain_per_gpu_hour, never_stop=a.never_stop, seed=a.seed,
                      lookahead=a.lookahead, keep_rule=a.keep_rule, dry_run=a.dry_run, surface=a.surface,
                      prune=a.prune, strategy_options=so, executor_options=eo, backfill=a.backfill)


def _print_summary(console, opened, summary) -> None:
    from fleetlab.facts import compute, headline

    p = opened.project
    for line in headline(compute(p, opened.store, summary.tag)):
        console.print(line, markup=False)
    console.print(f"results: {p.root / 'results.tsv'}; `fleetlab report -C {p.root}` for the plot")


def cmd_run(a) -> int:
    import signal
    import threading

    from fleetlab.api import open_project
    from fleetlab.project import Project, find_root
    from fleetlab.session import preflight, run_session

    preflight(Project.load(find_root(a.C)), _run_options(a))  # bad input refused before .fleetlab/ is written
    opened = open_project(a.C)
    if a.detach and not a.dry_run:
        from fleetlab.daemon import detach

        try:
            pid, log = detach(opened.project, [x for x in a.argv if x != "--detach"])
        finally:
            opened.close()
        print(f"serving in the background (pid {pid}); log: {log}; stop it with `fleetlab stop`")
        return 0
    # a shell's `&` starts background jobs with SIGINT ignored: Ctrl-C and `kill -INT` must still stop cleanly
    # (only the main thread may set handlers; a library caller running us in a thread keeps its own)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    server = None
    try:
        if a.serve:
            from fleetlab.serve import Background

            server = Background(opened.project.root, a.serve_host, a.serve_port, a.serve_token).start()
            print(server.binding.banner(), flush=True)
        console = _console()
        out = run_session(opened, _run_options(a), on_event=_Printer(console, opened.project.metric, a.quiet))
        if isinstance(out, list):
            for p in out:
                print(p)
            return 0
        if a.json:
            from fleetlab.facts import compute

            _print_json(compute(opened.project, opened.store, out.tag).to_dict())
        else:
            _print_summary(console, opened, out)
        if out.stop_reason.startswith("the baseline "):
            print(f"fleetlab: error: {out.stop_reason}", file=sys.stderr)
            return 1  # a command that does not run or a metric never printed: nothing can be compared
        if out.stop_reason.startswith("no workers left") or "changed in the project while the session ran" in \
                out.stop_reason:
            return 1  # nothing can run until the fleet or the project is mended
        return 130 if out.stop_reason == "interrupted" else 0
    finally:
        if server is not None:
            server.stop()
        opened.close()


def cmd_submit(a) -> int:
    from fleetlab.api import open_project, submit
    from fleetlab.errors import ConfigError

    if a.replicates < 1:  # refused before open_project writes a database
        raise ConfigError("--replicates must be at least 1", key="replicates")
    opened = open_project(a.C)
    try:
        exps = submit(opened, a.from_dir, a.message, replicates=a.replicates, parent=a.parent, agent=a.agent,
                      on_warning=lambda w: print(f"fleetlab: warning: {w}", file=sys.stderr), prune=not a.no_prune)
        for e in exps:
            print(e.id)
        return 0
    finally:
        opened.close()


def cmd_confirm(a) -> int:
    from fleetlab.api import confirm, open_project
    from fleetlab.facts import serving
    from fleetlab.session import RunOptions, run_session

    opened = open_project(a.C)
    try:
        exps = confirm(opened, a.pairs)
        ids = " ".join(e.id for e in exps)
        if serving(opened.project):
            print(f"queued {len(exps)} confirmation runs for the `fleetlab run` serving this project: {ids}")
            return 0
        console = _console()
        console.print(f"confirming {exps[0].tag}: {len(exps)} runs, baseline and incumbent interleaved ({ids})",
                      markup=False)
        out = run_session(opened, RunOptions(fleet=a.fleet, strategy="none", tag=exps[0].tag, never_stop=True,
                                             prune=False, confirm="only"),
                          on_event=_Printer(console, opened.project.metric, a.quiet))
        _print_summary(console, opened, out)
        return 130 if out.stop_reason == "interrupted" else 0
    finally:
        opened.close()


def cmd_wait(a) -> int:
    from fleetlab.api import open_project, records, wait

    opened = open_project(a.C)
    try:
        if a.idle or a.below is not None:
            from fleetlab.agents import wait_idle

            seen = wait_idle(opened, below=a.below, timeout=a.timeout)
            _print_json(seen) if a.json else print(f"idle workers {seen['idle_workers']}, backfilling "
                                                    f"{seen['backfill_workers']}, queue depth {seen['queue_depth']}")
            return 0
        done = wait(opened.store, a.ids or None, any_=a.any, timeout=a.timeout)
        recs = records(opened, done)
        if a.json:
            _print_json(recs)
        else:
            for r in recs:
                print(f"{r['id']}\t{r['state']}\t{r['metric'] if r['metric'] is not None else '-'}\t"
                      f"{r['status'] or '-'}\t{r['description']}")
        return 0
    finally:
        opened.close()


def cmd_status(a) -> int:
    from fleetlab.api import open_project, status

    opened = open_project(a.C, readonly=True)
    try:
        while True:
            st = status(opened)
            if a.json:
                _print_json(st)
            else:
                c = _console()
                if a.watch:
                    c.clear()
                sess = st["session"] or {}
                from fleetlab.daemon import serving_pid

                pid = serving_pid(opened.project)
                c.print(f"serving: yes, `fleetlab run` pid {pid} (stop it with `fleetlab stop`)" if pid else
                        "serving: no (nothing runs submissions; start with `fleetlab run --strategy none --detach`)")
                from fleetlab.facts import compute, headline

                c.print(f"session status: {sess.get('status', 'none')}")
                for line in headline(compute(opened.project, opened.store, st["tag"])):
                    c.print(line, markup=False)
                for r in st["running"]:
                    c.print(f"  running {r['id']} on {r['worker']} ({r['hardware']}) {r['elapsed_s']:.0f} s: "
                            f"{r['description'][:60]}")
                if st["queued"]:
                    c.print(f"  queued: {', '.join(st['queued'][:12])}{' ...' if len(st['queued']) > 12 else ''}")
            if not a.watch:
                return 0
            time.sleep(a.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        opened.close()


def cmd_results(a) -> int:
    from fleetlab.api import fmt_metric, open_project, results

    opened = open_project(a.C, readonly=True)
    try:
        if a.tsv:
            from fleetlab.store.tsv import render, rows

            sys.stdout.write(render(rows(opened.project, opened.store)))
            return 0
        recs = results(opened, a.tag, agent=a.agent)
        if a.last:
            recs = recs[-a.last:]
        if a.json:
            _print_json(recs)
            return 0
        from rich.table import Table

        # one line per experiment at any terminal width: the description is cut with an ellipsis, never wrapped
        rows = []
        for r in recs:
            status = r["status"] or r["state"]  # queued / running / cancelled: no result yet
            if r["status"] and r["state"] not in ("done", r["status"]):
                status += f" ({r['state']})"  # how it ended when that is not plain: pruned, timeout, no_metric
            rows.append((r["id"], fmt_metric(r["metric"]) + ("*" if r.get("metric_observed") else ""), status,
                         r["role"], r["hardware"] or "-", r["strategy"][:18], r["description"]))
        cols = ("id", opened.project.metric, "status", "role", "hw", "strategy")
        widths = [max([len(col)] + [len(row[k]) for row in rows]) for k, col in enumerate(cols)]
        console = _console()
        # the short columns keep their width; the description takes what is left of the terminal (2 spaces a column)
        room = max(12, console.width - sum(widths) - 2 * len(cols))
        t = Table(title=f"{opened.project.metric} ({opened.project.goal})", box=None, padding=(0, 2, 0, 0),
                  pad_edge=False, title_justify="left")
        for col, w in zip(cols, widths):
            t.add_column(col, no_wrap=True, min_width=w)
        t.add_column("description", no_wrap=True)
        for row in rows:
            color = {"keep": "green", "crash": "red"}.get(row[2].split()[0], "")
            desc = row[6] if len(row[6]) <= room else row[6][:room - 1] + "…"
            t.add_row(*row[:2], f"[{color}]{row[2]}[/]" if color else row[2], *row[3:6], desc)
        if any(r.get("metric_observed") for r in recs):
            t.caption = "* the last value a pruned run showed"
        console.print(t)
        return 0
    finally:
        opened.close()


def cmd_show(a) -> int:
    from fleetlab.agents import diff_against, resolve_id
    from fleetlab.api import log_text, open_project, show

    opened = open_project(a.C, readonly=True)
    try:
        if a.diff or a.against:
            label, text = diff_against(opened, a.id, a.against or "parent")
            print(text or f"(no change against {label})")
            return 0
        a.id = resolve_id(opened.store, a.id)  # `incumbent` and `baseline` name those experiments
        if a.log:
            print(log_text(opened, a.id) or "(no log)")
            return 0
        rec = show(opened, a.id)
        e = opened.store.get(a.id)
        if a.json:
            _print_json(rec)
            return 0
        for k in ("id", "tag", "state", "status", "metric", "description", "parent", "strategy", "role", "hardware",
                  "worker", "seed", "runtime_s", "exit_code", "lines_added", "lines_removed", "reason"):
            if rec.get(k) not in (None, ""):
                print(f"{k:14s} {rec[k]}")
        if rec.get("decision"):
            d = rec["decision"]
            print(f"{'decision':14s} {d['status']}: {d['reason']}")
            for k, v in d["numbers"].items():
                print(f"  {k:12s} {v}")
        if e.knobs:
            print(f"{'knobs':14s} " + ", ".join(f"{k}={v}" for k, v in e.knobs.items()))
        if e.extras:
            print(f"{'extras':14s} " + ", ".join(f"{k}={v}" for k, v in e.extras.items()))
        if e.log_tail:
            print("log tail:\n" + "\n".join("  " + ln for ln in e.log_tail.splitlines()[-15:]))
        return 0
    finally:
        opened.close()


def cmd_knobs(a) -> int:
    from fleetlab.api import knob_space
    from fleetlab.project import Project, find_root

    project = Project.load(find_root(a.C))
    space = knob_space(project)
    if space is None:
        print("this project's knob file is not Python; it has no knobs")
        return 0
    if a.json:
        _print_json(space.to_dict())
        return 0
    from rich.table import Table

    t = Table(title=f"knobs of {project.knob_file}")
    for col in ("knob", "value", "kind", "range / choices"):
        t.add_column(col)
    for k in space.knobs.values():
        scale = " log" if k.log else " log(1-x)" if k.log1m else ""
        rng = ", ".join(map(str, k.choices)) if k.choices else f"[{k.low:g}, {k.high:g}]{scale}"
        t.add_row(k.name, str(k.value), k.kind, rng)
    c = _console()
    c.print(t)
    for con in space.constraints:
        c.print(f"constraint: {con}")
    return 0


def cmd_report(a) -> int:
    from fleetlab.api import open_project

    opened = open_project(a.C, readonly=a.json)
    try:
        from fleetlab.api import build_report

        if a.json:  # the facts alone: nothing is written
            from fleetlab.api import facts

            _print_json(facts(opened).to_dict())
            return 0
        paths = build_report(opened, out_dir=Path(a.out) if a.out else None)
        for name, p in paths.items():
            print(f"{name}: {p}")
        return 0
    finally:
        opened.close()


def cmd_analyze(a) -> int:
    from fleetlab.api import knob_space, open_project

    opened = open_project(a.C, readonly=True)
    try:
        from fleetlab.analysis.report import analyze, render_analysis

        try:
            space = knob_space(opened.project)
        except Exception:  # a knob file the space cannot be inferred from: effects without ranges
            space = None
        result = analyze(opened.project, opened.store, space=space)
        if a.json:
            _print_json(result)
        else:
            print(render_analysis(result))
        return 0
    finally:
        opened.close()


def cmd_quickstart(a) -> int:
    from fleetlab.errors import ConfigError
    from fleetlab.quickstart import quickstart

    if a.C is not None and a.dir is not None and Path(a.C).resolve() != Path(a.dir).resolve():
        raise ConfigError("give the quickstart's project directory once, as -C DIR or --dir DIR", key="dir")
    console = _console()
    return quickstart(Path(a.C or a.dir or "fleetlab-quickstart"), minutes=a.minutes, fleet=a.fleet,
                      template=a.template, on_event=_Printer(console, "val_bpb" if a.template == "gpt" else "val_loss"),
                      say=lambda text: console.print(text, markup=False))


def cmd_bench(a) -> int:
    from fleetlab.bench.cli import bench_main

    return bench_main(a)


def cmd_notes(a) -> int:
    from fleetlab.api import open_project

    opened = open_project(a.C)
    try:
        if a.action == "add":
            from fleetlab.api import add_note

            n = add_note(opened, a.agent or a.author, " ".join(a.text), a.experiment)
            print(f"note {n} added")
            return 0
        notes = opened.store.notes(limit=None if a.agent else a.last)
        if a.agent:
            notes = [n for n in notes if n["author"] == a.agent][:a.last or None]
        if a.json:
            _print_json(notes)
        else:
            for n in notes:
                ts = time.strftime("%Y-%m-%d %H:%M", time.localtime(n["at"] or 0))
                print(f"[{n['id']}] {ts} {n['author']}{' on ' + n['experiment'] if n['experiment'] else ''}: "
                      f"{n['text']}")
        return 0
    finally:
        opened.close()


def cmd_serve(a) -> int:
    from fleetlab.serve import serve

    return serve(a.C, a.host, a.port, a.token, say=lambda line: print(line, flush=True))


def cmd_agent_guide(a) -> int:
    from fleetlab.agent_guide import write_agent_guide
    from fleetlab.project import Project, find_root

    project = Project.load(find_root(a.C))
    path = write_agent_guide(project, Path(a.out) if a.out else None)
    print(f"wrote {path}")
    return 0


def cmd_checkout(a) -> int:
    from fleetlab.agents import checkout
    from fleetlab.api import open_project

    opened = open_project(a.C)
    try:
        origin, dest = checkout(opened, a.dir, a.id, force=a.force)
        print(f"checked out {origin or 'the project (no incumbent yet)'} into {dest}; edit it, then "
              f"`fleetlab submit --from {a.dir} -m \"...\"`")
        return 0
    finally:
        opened.close()


def cmd_stop(a) -> int:
    from fleetlab.daemon import stop
    from fleetlab.project import Project, find_root

    pid = stop(Project.load(find_root(a.C)), timeout=a.timeout)
    print(f"stopped `fleetlab run` (pid {pid})" if pid else "no `fleetlab run` is serving this project")
    return 0


COMMANDS = {name[4:].replace("_", "-"): fn for name, fn in dict(globals()).items() if name.startswith("cmd_")}


def main(argv: list[str] | None = None) -> int:
    from fleetlab.cli_args import build_parser

    parser = build_parser(COMMANDS)
    a, extra = parser.parse_known_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)  # `run --detach` starts the same command again
    if extra and getattr(a, "fn", None) is cmd_notes and not any(x.startswith("-") for x in extra):
        a.text = [*a.text, *extra]  # `notes add --author X "text"`: the text may follow the options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(a, "fn", None):
        parser.print_help()
        return 0
    for stream in (sys.stdout, sys.stderr):  # a log's odd bytes or a non-UTF-8 terminal: '?' rather than a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    from fleetlab.errors import FleetlabError

    try:
        return a.fn(a) or 0
    except FleetlabError as e:
        print(f"fleetlab: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("fleetlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug: one line, the traceback on request
        if os.environ.get("FLEETLAB_DEBUG"):
            raise
        print(f"fleetlab: internal error: {type(e).__name__}: {e} (set FLEETLAB_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
