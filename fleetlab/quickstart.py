"""`fleetlab quickstart`: the whole loop on a fresh machine in about five minutes, offline, GPU or not.

Writes the gpt template (offline corpus: this Python's own text and source files) into ./fleetlab-quickstart, prepares
data and tokenizer once, runs the baseline and a few waves of the default strategy on the local fleet (one slot per
GPU, else two CPU slots with one thread each), then prints the best result against the baseline and writes the report.
Running it again resumes the same project.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

CPU_TIME_BUDGET_S = 30  # per experiment on a CPU: a 2-core laptop runs ~8 of them in five minutes
# On a GPU: preparing the data (~1 min, once), one cold start (~60 s of compiling) and four warm ones (~20 s of start-up
# and evaluation) at 15 s of training fit in five minutes; 256 MB of offline text is ~70 M tokens, twice what one run
# reads (~30 M at 2**19 tokens per 0.32 s step, warm-up steps included).
GPU_TIME_BUDGET_S = 15
GPU_OFFLINE_MB = 256


def quickstart(dest: Path, minutes: float = 5.0, fleet: str | None = None, template: str = "gpt",
               on_event: Callable[..., None] | None = None, say: Callable[[str], None] = print) -> int:
    from fleetlab.api import build_report, open_project
    from fleetlab.errors import ConfigError
    from fleetlab.facts import compute, headline
    from fleetlab.fleet.local import detect_gpus
    from fleetlab.session import RunOptions, run_session
    from fleetlab.templates import write_template

    if minutes <= 0:
        raise ConfigError("--minutes must be positive", key="minutes")
    dest = Path(dest)
    gpus = detect_gpus()
    if not (dest / "fleetlab.toml").is_file():
        write_template(template, dest)
        if template == "gpt":
            toml = dest / "fleetlab.toml"
            budget = GPU_TIME_BUDGET_S if gpus else CPU_TIME_BUDGET_S
            text = re.sub(r"(?m)^time_budget_s = \d+", f"time_budget_s = {budget}", toml.read_text())
            if gpus:
                text = re.sub(r'(?m)^setup = "python prepare.py --source offline"',
                              f'setup = "python prepare.py --source offline --max-mb {GPU_OFFLINE_MB}"', text)
            toml.write_text(text)
            say(f"{budget} s of training per experiment" + (
                f" on the GPU scale, offline corpus capped at {GPU_OFFLINE_MB} MB (~70 M tokens, more than a run "
                "reads: no data repeats; runs print epochs)" if gpus else " on the CPU scale"))
        say(f"wrote the {template} template to {dest}")
    else:
        say(f"resuming the project in {dest}")
    fleet = fleet or ("local:gpus" if gpus else "local:2")
    say(f"fleet {fleet}; session budget {minutes:g} min; preparing data (once per machine) ...")
    opened = open_project(dest)
    try:
        summary = run_session(opened, RunOptions(fleet=fleet, max_hours=minutes / 60.0), on_event=on_event)
        paths = build_report(opened)
        say("")
        f = compute(opened.project, opened.store, summary.tag)
        if f.baseline is None:
            say(f"no baseline result yet ({summary.stop_reason}); run `fleetlab quickstart` again to continue")
        for line in headline(f):
            say(line)
        say(f"report: {paths['html']} (plot: {paths['png']})")
        say(f"results: {dest / 'results.tsv'}; keep going with: fleetlab run -C {dest}")
        return 0
    finally:
        opened.close()
