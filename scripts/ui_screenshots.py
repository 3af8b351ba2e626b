#!/usr/bin/env python
"""Screenshots of the MLflow UI for the README, taken from a real store in a real browser.

    python scripts/ui_screenshots.py                      # write docs/images/ui-*.png
    python scripts/ui_screenshots.py --out /tmp/shots --keep-store --frontier --dump-page

Populates a temporary SQLite store as a user's session would: a two-job sweep (quant_pair=fp8,int4
on the embedded tiny model), a comparison of its children, an evaluation of one child and a mixed
fp8+int4 recipe (optionally an int4 frontier run); starts ``mlflow ui`` on 127.0.0.1 and drives
headless Chromium through selenium (Debian packages ``chromium`` and ``chromium-driver``; PyPI
``selenium``):

- ``ui-run-overview.png``: a sweep child's Overview: its description (the verdict) and its
  metrics, headline first;
- ``ui-runs-table.png``: the experiment's runs table with its default columns, the sweep expanded;
- ``ui-compare.png``: MLflow's Compare page for the sweep's two children;
- ``ui-chart-profiles.png``: the experiment's chart view, ``depth_profile/share/<kind>`` (step =
  decoder layer) of the two sweep children overlaid, one chart per kind;
- ``ui-run-report.png``: the child's ``layer-sensitivity-report.html`` in the artifact viewer
  (figures inlined);
- ``ui-sweep-heatmap.png``: the sweep parent's ``comparison/sweep-shares.png`` artifact;
- ``ui-run-frontier.png`` (with ``--frontier``): the frontier run's ``figures/frontier.png``.

With ``--dump-page`` each page's text (``.txt``) and DOM (``.html``) are written beside its PNG,
plus ``runs.json`` (the store's runs: names, descriptions, headline metrics) for checks that the
pages agree with the runs. Pages are read once they stop changing (MLflow re-renders as data
arrives), and layout-only gestures (dragging a resize handle) are retried on a stale element.

The server (its whole process group) and the browser are stopped on every exit, and the temporary
store is removed unless ``--keep-store`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "images"
MAX_PNG_BYTES = 400_000
# The MLflow 3 UI opens experiments on its GenAI pages; runs live under "Model training".
WORKFLOW = "workflowType=machine_learning"
SWEEP_ARGS = ["-m", "quant_pair=fp8,int4", "dataset.max_calib_samples=8"]
FRONTIER_ARGS = ["quant_pair=int4", "autoquant.effective_bits=[4.5,6,8]", "dataset.max_calib_samples=8"]
EVALUATE_ARGS = ["--keep", "0.25", "--draws", "3", "--ground-truth", "none", "--max-eval-samples", "64"]
# The sweep's data settings: the recipe composes the stored fp8 and int4 scores (no new search).
RECIPE_ARGS = ["--formats", "fp8,int4", "--effective-bits", "6", "dataset.max_calib_samples=8"]
REPORT = "layer-sensitivity-report.html"
DEPTH_PREFIX = "depth_profile"  # per-kind step series: step = decoder layer
CHART_METRIC = "share"  # normalised per run, so runs of different pairs share one y axis
JOB_TIMEOUT_S = 900
SERVER_START_TIMEOUT_S = 180
PAGE_TIMEOUT_S = 90

log = logging.getLogger("ui_screenshots")


@dataclass(frozen=True)
class StoreRuns:
    """The runs the screenshots show, found in the populated store."""

    uri: str
    experiment_id: str
    sweep_parent: str
    children: dict[str, str]  # run name -> run id, in creation order
    decoder_kinds: list[str]  # kinds whose profile is a step series (one point per decoder layer)
    frontier: str | None


# ---------------------------------------------------------------- store


def job_env(uri: str) -> dict[str, str]:
    """Environment for the jobs: the temporary store, the default experiment, no outer run."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HYDRA_FULL_ERROR": "0",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1")}
    for inherited in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(inherited, None)
    return env


def run_job(args: list[str], workdir: Path, uri: str, name: str) -> None:
    """``python -m layer_sensitivity <args>``; a failure stops the script with the job's log tail."""
    log.info("populating the store: %s", " ".join(args))
    done = subprocess.run([sys.executable, "-m", "layer_sensitivity", *args], cwd=workdir,
                          env=job_env(uri), capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    (workdir / f"{name}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{name} job failed (exit {done.returncode}):\n{tail}")


def run_tool(module: str, args: list[str], workdir: Path, uri: str, name: str) -> str:
    """``python -m layer_sensitivity.cli.<module> <args>`` (compare, evaluate, recipe); its stdout."""
    log.info("populating the store: %s %s", module, " ".join(args))
    done = subprocess.run([sys.executable, "-m", f"layer_sensitivity.cli.{module}", *args], cwd=workdir,
                          env=job_env(uri), capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    (workdir / f"{name}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


def populate(workdir: Path, frontier: bool) -> str:
    """Fill ``workdir/mlflow.db`` (artifacts beside it) as a session would and return its URI: a
    sweep, a comparison of its children, an evaluation of one child, a mixed recipe."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    run_job([*SWEEP_ARGS, f"hydra.sweep.dir={workdir / 'multi'}"], workdir, uri, "sweep")
    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in runs if r.data.tags.get("sweep") == "parent")
    child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    run_tool("compare", ["--parent-run-id", parent.info.run_id], workdir, uri, "compare")
    run_tool("evaluate", ["--run-id", child.info.run_id, *EVALUATE_ARGS], workdir, uri, "evaluate")
    run_tool("recipe", [*RECIPE_ARGS, f"hydra.run.dir={workdir / 'recipe'}"], workdir, uri, "recipe")
    if frontier:
        run_job([*FRONTIER_ARGS, f"hydra.run.dir={workdir / 'frontier'}"], workdir, uri, "frontier")
    return uri


def find_runs(uri: str, frontier: bool) -> StoreRuns:
    """The sweep parent (tag ``sweep=parent``), its children and the frontier run, if any."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    if len(parents) != 1:
        raise RuntimeError(f"expected one sweep parent run in {uri}, found {len(parents)}")
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
                and "sweep.job" in r.data.tags]
    if len(children) < 2:
        raise RuntimeError(f"the sweep parent has {len(children)} child runs, expected 2")
    prefix = f"{DEPTH_PREFIX}/{CHART_METRIC}/"
    profiles = [k.removeprefix(prefix) for k in children[0].data.metrics if k.startswith(prefix)]
    kinds = sorted(k for k in profiles
                   if len(client.get_metric_history(children[0].info.run_id, prefix + k)) > 1)
    if not kinds:
        raise RuntimeError(f"the sweep children log no {prefix}<kind> step series")
    frontiers = [r for r in runs if r.info.run_name.endswith("bits") and "frontier/total_score"
                 in r.data.metrics and "mlflow.parentRunId" not in r.data.tags]
    return StoreRuns(uri=uri, experiment_id=parent.info.experiment_id, sweep_parent=parent.info.run_id,
                     children={r.info.run_name: r.info.run_id for r in children}, decoder_kinds=kinds,
                     frontier=frontiers[-1].info.run_id if frontier and frontiers else None)


def dump_runs(uri: str, target: Path) -> Path:
    """Every run of the store as JSON (name, parent, description, tags, single-value metrics), for
    checks that what the pages show agrees with the runs."""
    import json

    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    doc = [{"run_id": r.info.run_id, "name": r.info.run_name, "experiment_id": r.info.experiment_id,
            "status": r.info.status, "parent": r.data.tags.get("mlflow.parentRunId"),
            "description": r.data.tags.get("mlflow.note.content", ""),
            "tags": {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.")},
            "metrics": r.data.metrics, "params": r.data.params} for r in runs]
    target.write_text(json.dumps(doc, indent=2, sort_keys=True), encoding="utf-8")
    return target


# ---------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with code {server.returncode} before answering")
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                if reply.status == 200:
                    return
        time.sleep(1)
    raise RuntimeError(f"mlflow ui did not answer on {url} within {timeout_s:.0f} s")


def stop_group(server: subprocess.Popen[bytes], grace_s: float = 20) -> None:
    """SIGTERM the server's process group (uvicorn workers included), SIGKILL what outlives grace."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        server.poll()
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=10)


@contextlib.contextmanager
def mlflow_ui(uri: str, workdir: Path, port: int) -> Iterator[str]:
    """``mlflow ui`` on 127.0.0.1 in its own process group; yields its base URL."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    # One worker and no job runner: the screenshots need only the tracking API and artifacts.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    with open(workdir / "mlflow-ui.log", "wb") as server_log:
        server = subprocess.Popen(command, cwd=workdir, env=env, stdout=server_log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_up(url, server, SERVER_START_TIMEOUT_S)
            log.info("mlflow ui answers on %s", url)
            yield url
        finally:
            stop_group(server)


# ---------------------------------------------------------------- browser


@contextlib.contextmanager
def chromium(width: int, height: int) -> Iterator[Any]:
    """Headless Chromium through the system chromedriver (no driver download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver_path is None:
        raise RuntimeError("chromium and chromedriver must be on PATH "
                           "(Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", "--force-device-scale-factor=1", f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        driver.set_page_load_timeout(PAGE_TIMEOUT_S)
        yield driver
    finally:
        driver.quit()


def set_viewport(driver: Any, width: int, height: int) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


def wait_for(driver: Any, condition: Any, what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, PAGE_TIMEOUT_S, poll_frequency=0.5).until(condition)
    except TimeoutException as e:
        raise RuntimeError(f"timed out waiting for {what} on {driver.current_url}") from e


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def close_assistant(driver: Any) -> None:
    """The MLflow Assistant side panel opens on the runs page and takes a third of the width."""
    for button in css(driver, 'button[data-component-id="mlflow.assistant.chat_panel.close"]'):
        with contextlib.suppress(Exception):
            button.click()


def hide_plot_toolbars(driver: Any) -> None:
    """Plotly's hover toolbars would cover the charts' top-left corner in a still image."""
    driver.execute_script("const s = document.createElement('style');"
                          "s.textContent = '.modebar-container{display:none !important}';"
                          "document.head.appendChild(s);")


def wait_stable(driver: Any, selector: str, what: str, minimum: int = 1, quiet_s: float = 1.0) -> list[Any]:
    """The elements matching ``selector`` once the page stops re-rendering them: at least
    ``minimum`` of them, with the same count and boxes for ``quiet_s`` (MLflow re-renders as runs,
    metrics and layout arrive; an element found mid-render goes stale)."""
    script = ("return Array.from(document.querySelectorAll(arguments[0])).map(e => {"
              "const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height].join(',');});")
    last: list[Any] = []
    since = [time.monotonic()]

    def settled(d: Any) -> bool:
        boxes = d.execute_script(script, selector)
        if boxes != last or len(boxes) < minimum:
            last[:] = boxes
            since[0] = time.monotonic()
            return False
        return time.monotonic() - since[0] >= quiet_s

    wait_for(driver, settled, f"{what} to stop changing")
    return css(driver, selector)


def retry_gesture(gesture: Any, what: str, attempts: int = 3) -> None:
    """A layout-only gesture (a drag that resizes), retried when a re-render made its element stale
    in between finding and using it; ``gesture`` finds its elements afresh on every attempt."""
    from selenium.common.exceptions import (
        ElementNotInteractableException,
        MoveTargetOutOfBoundsException,
        StaleElementReferenceException,
    )

    for attempt in range(1, attempts + 1):
        try:
            gesture()
            return
        except (StaleElementReferenceException, MoveTargetOutOfBoundsException,
                ElementNotInteractableException) as e:
            log.info("%s: %s (attempt %d of %d)", what, type(e).__name__, attempt, attempts)
            time.sleep(1)
    log.warning("%s gave up after %d attempts; the screenshot keeps the default layout", what, attempts)


def drag(driver: Any, element: Any, dx: int, dy: int = 0) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    # Several small moves: react-resizable only follows pointer moves after the press.
    chain = ActionChains(driver).move_to_element(element).click_and_hold()
    for _ in range(4):
        chain = chain.move_by_offset(dx // 4, dy // 4)
    chain.release().perform()


def row_run_ids(driver: Any) -> dict[str, Any]:
    """Run id -> that row's visibility toggle (the eye) in the runs table."""
    toggles = {}
    for toggle in css(driver, "input.is-visibility-toggle-checkbox"):
        run_id = driver.execute_script(
            "const r = arguments[0].closest('[row-id]'); return r && r.getAttribute('row-id');", toggle)
        if run_id:
            toggles[run_id] = toggle
    return toggles


CARD = '[data-testid="experiment-view-compare-runs-card"]'


def chart_view(driver: Any, base: str, runs: StoreRuns) -> None:
    """Runs page, chart mode: the sweep children's depth profiles, the other runs hidden."""
    open_page(driver, f"{base}/#/experiments/{runs.experiment_id}/runs?{WORKFLOW}&compareRunsMode=CHART")
    wait_stable(driver, 'button[data-component-id*="runnamecellrenderer"]', "the runs table rows")
    close_assistant(driver)
    shown = set(runs.children.values())
    if not shown <= set(row_run_ids(driver)):
        parent_row = f'[row-id="{runs.sweep_parent}"] button[data-component-id*="runnamecellrenderer"]'
        expanders = css(driver, parent_row) or css(driver, 'button[data-component-id*="runnamecellrenderer"]')
        expanders[0].click()  # expand the sweep
        wait_for(driver, lambda d: shown <= set(row_run_ids(d)), "the sweep's child rows")
    wait_stable(driver, "input.is-visibility-toggle-checkbox", "the run rows")
    for run_id, toggle in row_run_ids(driver).items():
        if run_id not in shown:
            driver.execute_script("arguments[0].closest('label').click();", toggle)
    def widen_table() -> None:  # so the run names are not cut
        for handle in css(driver, 'div[handleaxis="e"]')[:1]:
            drag(driver, handle, 80)

    retry_gesture(widen_table, "widening the runs table")
    kinds = "|".join(re.escape(k) for k in runs.decoder_kinds)
    search = wait_stable(driver, 'input[placeholder="Search metric charts"]', "the chart search box")[0]
    search.send_keys(f"{DEPTH_PREFIX}/{CHART_METRIC}/({kinds})$")
    count = len(runs.decoder_kinds)
    wait_for(driver, lambda d: len(css(d, CARD)) == count, f"{count} {CHART_METRIC} charts")
    wait_stable(driver, CARD, "the chart cards", minimum=count)

    def two_per_row() -> None:  # widening one card sets the section's column count
        grid = css(driver, '[data-testid="draggable-chart-cards-grid"]')[0]
        card = css(driver, CARD)[0]
        drag(driver, css(driver, '[data-testid="draggable-card-resize-handle"]')[0],
             grid.size["width"] // 2 - card.size["width"])

    retry_gesture(two_per_row, "two charts per row")
    wait_for(driver, lambda d: len(css(d, ".js-plotly-plot g.trace.scatter")) >= 2 * count,
             "one line per run in every chart")
    wait_stable(driver, ".js-plotly-plot", "the plots (relayout after the resize)", minimum=count)
    hide_plot_toolbars(driver)
    driver.find_element("tag name", "body").click()  # move focus off the search box


def run_overview(driver: Any, base: str, runs: StoreRuns, run_id: str) -> None:
    """A run's Overview: description (expanded) and metrics table."""
    open_page(driver, f"{base}/#/experiments/{runs.experiment_id}/runs/{run_id}?{WORKFLOW}")
    wait_for(driver, lambda d: "Metrics (" in d.find_element("tag name", "body").text, "the metrics table")
    close_assistant(driver)
    for link in css(driver, "button, a, span"):
        with contextlib.suppress(Exception):
            if link.text.strip() == "Show more":
                link.click()
                break
    wait_stable(driver, "table tr, [role=row]", "the metrics table rows")


def open_page(driver: Any, url: str) -> None:
    """Load ``url`` afresh: a URL that differs only after ``#`` would be a same-document
    navigation, which the MLflow app does not always follow (a preview left from the last page)."""
    driver.get("about:blank")
    driver.get(url)


def runs_table(driver: Any, base: str, runs: StoreRuns) -> None:
    """The experiment's runs table as a fresh store shows it (default columns), sweep expanded."""
    open_page(driver, f"{base}/#/experiments/{runs.experiment_id}/runs?{WORKFLOW}")
    wait_stable(driver, 'button[data-component-id*="runnamecellrenderer"]', "the runs table rows")
    close_assistant(driver)
    expanders = css(driver, f'[row-id="{runs.sweep_parent}"] button')
    if expanders and not set(runs.children.values()) <= set(row_ids(driver)):
        with contextlib.suppress(Exception):
            expanders[0].click()
    wait_stable(driver, "[row-id]", "the run rows")


def row_ids(driver: Any) -> list[str]:
    return [r.get_attribute("row-id") for r in css(driver, "[row-id]")]


def compare_page(driver: Any, base: str, runs: StoreRuns) -> None:
    """MLflow's Compare page for the sweep's children."""
    ids = ",".join(f'"{r}"' for r in runs.children.values())
    open_page(driver, f'{base}/#/compare-runs?runs=[{ids}]&experiments=["{runs.experiment_id}"]')
    wait_for(driver, lambda d: "run/top1_share" in d.find_element("tag name", "body").text,
             "the compared metrics")
    close_assistant(driver)
    wait_stable(driver, "table tr, [role=row]", "the compare tables")


def artifact_view(driver: Any, base: str, runs: StoreRuns, run_id: str, path: str) -> Any:
    """A run's Artifacts tab with ``path`` previewed; returns the preview image element."""
    open_page(driver, f"{base}/#/experiments/{runs.experiment_id}/runs/{run_id}/artifacts/{path}?{WORKFLOW}")
    selector = f'img[alt="{path}"]'
    wait_for(driver, lambda d: [i for i in css(d, selector) if d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0;", i)], f"the preview of {path}")
    close_assistant(driver)
    return wait_stable(driver, selector, f"the preview of {path}")[0]


def html_artifact_view(driver: Any, base: str, runs: StoreRuns, run_id: str, path: str) -> dict[str, Any]:
    """A run's Artifacts tab with the HTML file ``path`` rendered in MLflow's iframe; returns what
    the frame shows: its text and how many of its images loaded."""
    open_page(driver, f"{base}/#/experiments/{runs.experiment_id}/runs/{run_id}/artifacts/{path}?{WORKFLOW}")
    frame = wait_for(driver, lambda d: css(d, "iframe"), f"the HTML preview of {path}")[0]
    close_assistant(driver)
    driver.switch_to.frame(frame)
    try:
        wait_for(driver, lambda d: d.execute_script(
            "const i = Array.from(document.images); return i.length > 0 && "
            "i.every(x => x.complete && x.naturalWidth > 0);"), f"the figures inside {path}")
        shown = {"text": driver.find_element("tag name", "body").text,
                 "images": driver.execute_script("return document.images.length;")}
        # Show the first figure in the still image, its section heading on top.
        driver.execute_script("const h = Array.from(document.querySelectorAll('h2'))"
                              ".find(x => x.textContent.trim() === 'Figures');"
                              "(h || document.images[0]).scrollIntoView();")
    finally:
        driver.switch_to.default_content()
    wait_stable(driver, "iframe", f"the preview frame of {path}")
    return shown


# ---------------------------------------------------------------- images


def save_png(driver: Any, target: Path, bottom: int | None = None, dump_page: bool = False) -> Path:
    """Screenshot the viewport (cut below ``bottom`` px) as a PNG under MAX_PNG_BYTES."""
    from PIL import Image

    raw = target.with_suffix(".raw.png")
    driver.save_screenshot(str(raw))
    with Image.open(raw) as shot:
        image = shot.convert("RGB")
    raw.unlink()
    if bottom is not None:
        image = image.crop((0, 0, image.width, min(image.height, bottom)))
    image.save(target, optimize=True)
    if target.stat().st_size > MAX_PNG_BYTES:  # UI pages have few colours: a palette loses nothing visible
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    if dump_page:
        body = driver.find_element("tag name", "body").text
        target.with_suffix(".txt").write_text(body, encoding="utf-8")
        target.with_suffix(".html").write_text(driver.page_source, encoding="utf-8")
    log.info("wrote %s (%d KB)", target, target.stat().st_size // 1024)
    return target


def below(image: Any, margin: int = 24) -> int:
    """Page y just under an element, for cropping empty space under a previewed figure."""
    return int(image.location["y"] + image.size["height"] + margin)


def take_screenshots(base: str, runs: StoreRuns, out: Path, dump_page: bool) -> list[Path]:
    child = next(iter(runs.children.values()))
    written = []
    with chromium(1400, 1100) as driver:
        set_viewport(driver, 1400, 1000)
        run_overview(driver, base, runs, child)
        written.append(save_png(driver, out / "ui-run-overview.png", dump_page=dump_page))
        runs_table(driver, base, runs)
        written.append(save_png(driver, out / "ui-runs-table.png", bottom=420, dump_page=dump_page))
        compare_page(driver, base, runs)
        written.append(save_png(driver, out / "ui-compare.png", dump_page=dump_page))
        set_viewport(driver, 1400, 1060)
        chart_view(driver, base, runs)
        written.append(save_png(driver, out / "ui-chart-profiles.png", dump_page=dump_page))
        set_viewport(driver, 1400, 1000)
        shown = html_artifact_view(driver, base, runs, child, REPORT)
        written.append(save_png(driver, out / "ui-run-report.png", dump_page=dump_page))
        if dump_page:
            (out / "ui-run-report.frame.txt").write_text(
                f"images: {shown['images']}\n{shown['text']}", encoding="utf-8")
        set_viewport(driver, 1400, 900)
        heatmap = artifact_view(driver, base, runs, runs.sweep_parent, "comparison/sweep-shares.png")
        written.append(save_png(driver, out / "ui-sweep-heatmap.png", below(heatmap), dump_page))
        if runs.frontier:
            frontier = artifact_view(driver, base, runs, runs.frontier, "figures/frontier.png")
            written.append(save_png(driver, out / "ui-run-frontier.png", below(frontier), dump_page))
    return written


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the PNGs")
    parser.add_argument("--keep-store", action="store_true",
                        help="keep the temporary store (database, artifacts, job and server logs)")
    parser.add_argument("--frontier", action="store_true",
                        help="also log an int4 frontier run and screenshot its frontier figure")
    parser.add_argument("--dump-page", action="store_true",
                        help="also write each page's text (.txt) and DOM (.html) beside its PNG")
    parser.add_argument("--port", type=int, default=0, help="port for mlflow ui (default: a free one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ui-screenshots-"))
    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so the server and browser are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        uri = populate(workdir, args.frontier)
        runs = find_runs(uri, args.frontier)
        if args.dump_page:
            dump_runs(uri, args.out / "runs.json")
        with mlflow_ui(uri, workdir, args.port) as base:
            take_screenshots(base, runs, args.out, args.dump_page)
    except RuntimeError as e:
        log.error("%s", e)
        return 1
    finally:
        if args.keep_store:
            log.info("store kept in %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
