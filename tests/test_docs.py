"""The README and docs stay true: every relative link resolves (file and heading), and every ``uv run <script>`` they
name exists and answers ``--help``."""

from concurrent.futures import ThreadPoolExecutor
import contextlib
import io
import re
import runpy
import subprocess
import sys

import pytest

from tests.architecture import REPO

PAGES = sorted([REPO / "README.md", REPO / "lab" / "README.md", REPO / "configs" / "README.md",
                *(REPO / "docs").glob("*.md"), *(REPO / "examples").glob("*/README.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
UV_RUN = re.compile(r"uv run (?:--extra \S+ )*((?:scripts|lab/scripts|lab/device|examples)/[\w/.-]+\.py)")


def slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def links(page) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [m.group(1) for m in LINK.finditer(text) if not re.match(r"[a-z]+:", m.group(1))]


def test_pages_exist():
    assert len(PAGES) >= 12, PAGES
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


def test_slug_matches_github():
    assert slug("Flow vs EqM at matched budgets, 3 training seeds (`uv run lab/scripts/decoder_study.py`)") == \
        "flow-vs-eqm-at-matched-budgets-3-training-seeds-uv-run-labscriptsdecoder_studypy"
    assert slug("Installs: CPU, GPU, TPU") == "installs-cpu-gpu-tpu"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    bad = []
    for link in links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            bad.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            bad.append(f"{link}: no heading with that anchor in {target.relative_to(REPO)}")
    assert bad == [], bad


def test_every_uv_run_script_exists_and_answers_help():
    scripts = sorted({m.group(1) for page in PAGES for m in UV_RUN.finditer(page.read_text())})
    assert len(scripts) >= 15, scripts
    missing = [s for s in scripts if not (REPO / s).is_file()]
    assert missing == [], missing

    def help_of(script):
        proc = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True,
                              timeout=300, cwd=REPO)
        return proc.returncode, proc.stdout, proc.stderr

    def help_in_process(script):
        """``script --help`` run in this process (its imports are mostly loaded already: seconds instead of an
        interpreter start each); the exit code, stdout and stderr."""
        out, err, argv = io.StringIO(), io.StringIO(), sys.argv
        sys.argv = [str(REPO / script), "--help"]
        code = 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                runpy.run_path(str(REPO / script), run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            sys.argv = argv
        return code, out.getvalue(), err.getvalue()

    # In their own interpreter: train.py configures JAX's cache and logging before parsing, and the examples import
    # simulators and clients this process does not need.
    own_process = [s for s in scripts if s == "scripts/train.py" or s.startswith("examples/")]
    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(own_process, pool.map(help_of, own_process), strict=True))
    results |= {s: help_in_process(s) for s in scripts if s not in own_process}
    failed = [(s, code, err[-500:]) for s, (code, out, err) in results.items()
              if code != 0 or "usage" not in out.lower()]
    assert failed == [], failed
