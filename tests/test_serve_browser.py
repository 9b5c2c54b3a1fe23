"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) over a real serving session: the overview
shows exactly `status --json`, the table has every experiment, clicking one shows its diff, and a variant submitted
while the page is open appears and finishes on it without a reload. Screenshots go to $FLEETLAB_ARTIFACTS (default
tests/artifacts/)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, fleetlab_cmd
from test_serve import TOKEN, cli_json, http, make_session, serving_session

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("FLEETLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("no system Chromium (apt-get install chromium)", allow_module_level=True)

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def _artifacts() -> Path:
    d = Path(os.environ.get("FLEETLAB_ARTIFACTS") or ROOT / "tests" / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _between(shown, before, after) -> bool:
    """A figure that moves with the clock (wall hours, rates) lies between the CLI's values read before and after."""
    if shown == before or shown == after:
        return True
    nums = [x for x in (shown, before, after) if isinstance(x, (int, float)) and not isinstance(x, bool)]
    if len(nums) == 3:
        lo, hi = min(before, after), max(before, after)
        return lo - 1e-9 * max(1.0, abs(lo)) <= shown <= hi + 1e-9 * max(1.0, abs(hi))
    return False


def _pick(obj, path: str):
    for k in path.split("."):
        obj = obj.get(k) if isinstance(obj, dict) else None
    return obj


def test_dashboard_in_chromium(tmp_path: Path):
    proj = make_session(tmp_path)
    with serving_session(proj) as url, sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
                                                    headless=True, args=ARGS, viewport={"width": 1400, "height": 1000})
        try:
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            results = cli_json(proj, "results")
            page.wait_for_function(f"document.querySelectorAll('#exp-table tbody tr').length === {len(results)}",
                                   timeout=30_000)

            # the overview shows what `fleetlab status --json` says, figure by figure
            before = cli_json(proj, "status")
            page.evaluate("refresh()")
            shown = page.eval_on_selector_all("[data-key]", "els => els.map(e => [e.dataset.key, e.dataset.value,"
                                                            " e.textContent.trim()])")
            after = cli_json(proj, "status")
            keys = {k for k, _, _ in shown}
            assert {"incumbent.id", "incumbent.mean", "baseline.mean", "gain.pct", "experiments",
                    "experiments_per_hour", "utilization", "gpu_hours", "cost_usd"} <= keys
            for key, value, text in shown:
                assert _between(json.loads(value), _pick(before, key), _pick(after, key)), (key, value, before)
                assert text, key
            assert page.inner_text("[data-key='incumbent.id']") == before["incumbent"]["id"]
            assert f"{before['gain']['pct']:+.2f} %" == page.inner_text("[data-key='gain.pct']")

            # the table has every experiment; clicking one shows its diff against its parent
            ids = page.eval_on_selector_all("#exp-table tbody tr", "rows => rows.map(r => r.dataset.id)")
            assert sorted(ids) == sorted(r["id"] for r in results)
            explore = next(r for r in results if r["role"] == "explore")
            page.click(f"#exp-table tbody tr[data-id='{explore['id']}']")
            page.wait_for_function("document.querySelector('#detail-diff').textContent.includes('@@')",
                                   timeout=15_000)
            diff = fleetlab_cmd("show", explore["id"], "--diff", "-C", str(proj), check=True).stdout
            assert page.inner_text("#detail-diff").strip() == diff.strip()
            assert page.inner_text("#detail-title").startswith(explore["id"])
            page.screenshot(path=str(_artifacts() / "dashboard-experiment.png"), full_page=True)

            # live: a variant submitted while the page is open appears, runs and is shown finished, with no reload
            page.evaluate("window.__sameDocument = true")
            train = (proj / "train.py").read_text().replace("HIDDEN = 64", "HIDDEN = 96")
            variant = {"description": "HIDDEN 64 -> 96, live", "files": {"train.py": train}}
            code, body = http(url + "api/submit", variant, token=TOKEN)
            assert code == 201, body
            new_id = body["ids"][0]
            page.wait_for_selector(f"#exp-table tbody tr[data-id='{new_id}']", timeout=30_000)
            page.wait_for_function(
                f"(() => {{ const r = document.querySelector(\"#exp-table tbody tr[data-id='{new_id}']\");"
                " return r && r.children[3].textContent === 'done'; })()", timeout=90_000)
            assert page.evaluate("window.__sameDocument") is True
            assert page.eval_on_selector_all("#exp-table tbody tr", "rows => rows.length") == len(results) + 1
            page.click("#detail-close")
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(_artifacts() / "dashboard.png"))
            page.screenshot(path=str(_artifacts() / "dashboard-full.png"), full_page=True)
            assert page.query_selector("#noise-table td") and not page.query_selector("#effects .error")
            assert not errors, errors
        finally:
            ctx.close()
