"""fleetlab's command-line arguments: every command, its flags and their help (the commands live in cli.py)."""

from __future__ import annotations

import argparse
import os
from typing import Callable


def build_parser(handlers: dict[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """The argument parser; `handlers` maps each command's name to the function that runs it (cli.COMMANDS)."""
    p = argparse.ArgumentParser(prog="fleetlab", description="Autonomous research on a fleet of machines.")
    p.add_argument("--version", action="version", version="fleetlab 0.1.0")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, help_, json_=False):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("-C", metavar="DIR", default=None, help="project directory (default: the current one)")
        if json_:
            sp.add_argument("--json", action="store_true", help="print JSON")
        sp.set_defaults(fn=handlers[name])
        return sp

    sp = add("quickstart", "scaffold the gpt template and run a short research session, then report")
    sp.add_argument("--dir", default=None, help="project directory (default: ./fleetlab-quickstart; -C DIR too)")
    sp.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget of the session")
    sp.add_argument("--fleet", default=None)
    sp.add_argument("--template", default="gpt", choices=["gpt", "mlp"])

    sp = add("init", "write a research project from a template, or adopt an autoresearch checkout")
    sp.add_argument("dir", nargs="?")
    sp.add_argument("--template", default="gpt")
    sp.add_argument("--force", action="store_true", help="write into a non-empty directory")
    sp.add_argument("--adopt", action="store_true", help="write fleetlab.toml for an existing autoresearch checkout")

    sp = add("run", "the research loop (Ctrl-C or kill is safe; running it again resumes)", json_=True)
    sp.add_argument("--fleet", help="local:N | local:gpus | sim:13xH100+3xH200 | ray:http://HOST:8265 | sky:N")
    sp.add_argument("--strategy", help="auto | random | factorial | optuna | llm | baseline | none | a,b portfolio")
    sp.add_argument("--tag", help="session tag (default: resume the unfinished session or make a new one)")
    sp.add_argument("--max-experiments", type=int)
    sp.add_argument("--serve", action="store_true", help="serve the dashboard and JSON API beside the session")
    sp.add_argument("--serve-host", default="127.0.0.1")
    sp.add_argument("--serve-port", type=int, default=8765)
    sp.add_argument("--serve-token", help="bearer token for the API's writes (default: a new one, printed)")
    sp.add_argument("--max-hours", type=float)
    sp.add_argument("--max-gpu-hours", type=float)
    sp.add_argument("--max-cost", type=float, help="dollars of worker time")
    sp.add_argument("--target", type=float, help="stop once the incumbent reaches this metric")
    sp.add_argument("--min-gain-per-gpu-hour", type=float)
    sp.add_argument("--never-stop", action="store_true", help="no diminishing-returns stop rule")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--lookahead", type=int, help="proposals kept ready beyond the free workers")
    sp.add_argument("--keep-rule", default="auto", choices=["auto", "simple"])
    sp.add_argument("--prune", action=argparse.BooleanOptionalAction, default=None,
                    help="stop runs early that cannot win (default: [prune] enabled, on; runs without progress "
                         "lines are never stopped)")
    sp.add_argument("--dry-run", action="store_true", help="write launch specs for the first wave; launch nothing")
    sp.add_argument("--surface", help="surface for sim fleets (built-in name or file.py:FACTORY)")
    sp.add_argument("--keep-clusters", action="store_true")
    sp.add_argument("--agents", type=int)
    sp.add_argument("--llm-provider", choices=["anthropic", "openai"])
    sp.add_argument("--llm-model")
    sp.add_argument("--llm-base-url")
    sp.add_argument("--max-llm-cost", type=float)
    sp.add_argument("-q", "--quiet", action="store_true")
    sp.add_argument("--backfill", metavar="STRATEGY",
                    help="a strategy that proposes only for workers that would otherwise idle (e.g. auto)")
    sp.add_argument("--detach", action="store_true",
                    help="serve in the background (log and pid under .fleetlab/); `fleetlab stop` ends it")

    sp = add("submit", "queue a hand-made (or agent-made) variant; prints its id")
    sp.add_argument("--from", dest="from_dir", required=True, metavar="DIR", help="a copy of the project")
    sp.add_argument("-m", "--message", required=True, help="what the variant changes")
    sp.add_argument("--replicates", type=int, default=1)
    sp.add_argument("--parent", help="the experiment it starts from (default: the one `fleetlab checkout` copied, "
                                     "else the incumbent)")
    sp.add_argument("--agent", metavar="NAME", help="who made it (results and notes filter by it)")
    sp.add_argument("--no-prune", action="store_true", help="never stop its runs early")

    sp = add("confirm", "re-run the baseline and the incumbent interleaved: the confirmed, paired gain")
    sp.add_argument("--pairs", type=int, help="runs of each (default: [validity] replicates)")
    sp.add_argument("--fleet", help="where to run them (default: the project's fleet)")
    sp.add_argument("-q", "--quiet", action="store_true")

    sp = add("wait", "wait until experiments finish", json_=True)
    sp.add_argument("ids", nargs="*")
    sp.add_argument("--any", action="store_true", help="return when any of them finishes")
    sp.add_argument("--idle", action="store_true", help="return as soon as a worker of the session is idle")
    sp.add_argument("--below", type=int, metavar="N", help="with --idle: or once fewer than N experiments are queued")
    sp.add_argument("--timeout", type=float)

    sp = add("status", "the session at a glance", json_=True)
    sp.add_argument("--watch", action="store_true")
    sp.add_argument("--interval", type=float, default=2.0)

    sp = add("results", "every experiment: metric, keep/discard/crash, description", json_=True)
    sp.add_argument("--tsv", action="store_true", help="autoresearch-compatible results.tsv on stdout")
    sp.add_argument("--tag")
    sp.add_argument("--last", type=int, default=0)
    sp.add_argument("--agent", metavar="NAME", help="only the experiments submitted with --agent NAME")

    sp = add("checkout", "copy an experiment's project files (default: the incumbent's) into DIR, "
                                        "ready to edit and submit")
    sp.add_argument("dir")
    sp.add_argument("--id", help="the experiment to check out (default: the incumbent)")
    sp.add_argument("--force", action="store_true", help="replace an earlier checkout in DIR")

    sp = add("stop", "stop the `fleetlab run` serving this project (from any terminal) and wait for it")
    sp.add_argument("--timeout", type=float, default=120.0)

    sp = add("show", "one experiment: its decision, knobs, log tail; --diff or --log", json_=True)
    sp.add_argument("id", help="an experiment id, or incumbent / baseline")
    sp.add_argument("--diff", action="store_true")
    sp.add_argument("--against", metavar="WHAT", help="with --diff: baseline | parent (default) | incumbent | an id")
    sp.add_argument("--log", action="store_true")

    add("knobs", "the search space inferred from train.py and fleetlab.toml", json_=True)

    sp = add("report", "progress.png and report.html; --json: the session's facts", json_=True)
    sp.add_argument("--out", help="output directory (default: .fleetlab/report)")

    add("analyze", "noise floor, hardware effects, main effects and interactions, cost", json_=True)

    sp = add("notes", "the shared notepad of people and agents", json_=True)
    sp.add_argument("action", choices=["add", "list"])
    sp.add_argument("text", nargs="*")
    sp.add_argument("--author", default=os.environ.get("USER", "human"))
    sp.add_argument("--experiment")
    sp.add_argument("--last", type=int)
    sp.add_argument("--agent", metavar="NAME", help="add: write as NAME; list: only NAME's notes")

    sp = add("serve", "live dashboard and JSON API over the project's results")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond loopback needs --token)")
    sp.add_argument("--port", type=int, default=8765, help="0: any free port")
    sp.add_argument("--token", help="bearer token for writes (default: a new one, printed at start)")

    sp = add("agent-guide", "write AGENTS.md: how an external coding agent drives fleetlab")
    sp.add_argument("--out")

    sp = add("bench", "simulated-fleet benchmark against the original's figures", json_=True)
    sp.add_argument("--surface", default="autoresearch")
    sp.add_argument("--fleet", action="append", help="sim fleet, e.g. 13xH100+3xH200 (repeatable)")
    sp.add_argument("--workers", type=int, help="shorthand for --fleet <N>xH100")
    sp.add_argument("--strategy", default="auto")
    sp.add_argument("--hours", type=float, default=8.0)
    sp.add_argument("--seeds", type=int, default=3)
    sp.add_argument("--target", type=float)
    sp.add_argument("--noise", type=float, help="measurement noise sigma of the surface")
    sp.add_argument("--prune", action="store_true")
    sp.add_argument("--plot", help="where to write the plot (default: bench.png)")
    return p
