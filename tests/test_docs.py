"""Every command in the README and in docs/ runs as written, and every link there leads somewhere.

    .venv/bin/python -m pytest tests/test_docs.py

Commands are read from the fenced blocks of README.md and docs/*.md whose language is ``sh``,
``bash``, ``console`` (there only the ``$ `` lines) or none, and from the first column of the
README's table of commands. A block fenced as ``text`` (output, a diagram, a tree) is skipped;
any other language is an error, so no command can hide in a block the test does not read.
Lines ending in ``\\`` are joined, ``# comments`` dropped, and ``&&``, ``||``, ``;`` and ``|``
split a line into commands. Each command must match one kind in ``KINDS``; one that matches
none fails with its file and line. What each kind checks:

- ``verb`` (``python -m trainer VERB ...``, ``trainer VERB ...``): parsed by the real parser,
  ``trainer.cli.build_parser()``, placeholders as written. The commands in ``FAST_RUNS`` are
  also run in a temporary folder, on a tiny demo set (slow).
- ``module`` (``python -m trainer.X.Y ...``): ``--help`` exits 0 and names every flag used.
- ``pytest``: every test file named exists.
- ``make``: ``make -n`` exits 0, its recipe calls what ``MAKE_CALLS`` expects, and every
  ``python -m ...`` call in the recipe passes the check of its own kind.
- ``tool`` (``pulumi``, ``aws``, ``docker``, ...): only the name is checked, except that
  ``pulumi config set KEY`` needs KEY in infra/Pulumi.yaml and ``docker run ... IMAGE ARGS``
  parses ARGS as a verb.

Also: README.md is at most 12,000 bytes (a map; the sections live in docs/) and links every
page in docs/, and every relative link and ``#anchor`` in these pages leads to a file and a
heading that exist.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_BYTES = 12_000

COMMAND_LANGS = {"sh", "bash", "console", ""}
SKIPPED_LANGS = {"text"}  # output, diagrams, trees

# kind: what a command (its words joined by single spaces) must start with. First match wins.
PYTHON = r"(python3?|\.venv/bin/python) -m"
KINDS = {
    "verb": rf"({PYTHON} trainer|trainer)( |$)",
    "module": rf"{PYTHON} trainer\.[a-z_.]+( |$)",
    "pytest": rf"{PYTHON} pytest( |$)",
    "make": r"make( |$)",
    "tool": r"(pulumi|aws|docker|pip|git|cd|export)( |$)",
}
IMAGE = "av-emotion-trainer"  # the image deploy.yaml names: `docker run IMAGE ARGS` runs a verb

# make target: the call its recipe must make (None: nothing required).
MAKE_CALLS = {
    "setup": None, "test": "pytest", "demo": "trainer train", "bench": "trainer bench",
    "ablation": "trainer.bench.ablation", "robustness": "trainer.bench.robustness",
    "cv": "trainer cv", "extract": "trainer extract", "deploy": "trainer deploy",
    "status": "trainer status", "logs": "trainer logs", "monitor": "trainer monitor",
    "results": "trainer results", "destroy": "trainer destroy",
    "tensorboard": "trainer tensorboard",
}

# Commands from the docs that also run here, in this order, in one temporary folder: each as
# written plus the flags given here, which keep the data tiny and training to one epoch.
FAST_RUNS = {
    "python -m trainer demo-data --out demo-data": ["--speakers", "8", "--clips-per-speaker", "6"],
    "python -m trainer train --data demo-data --out runs/demo": ["--epochs", "1"],
    "python -m trainer evaluate --checkpoint runs/demo/checkpoints/best.pt --data held-out/ "
    "--out eval.json": [],
    "python -m trainer predict --checkpoint runs/demo/checkpoints/best.pt clip.npz more-clips/": [],
    "python -m trainer enroll --checkpoint runs/demo/checkpoints/best.pt --out speakers.npz "
    "new-speaker/": [],
    "python -m trainer export --checkpoint runs/demo/checkpoints/best.pt --format torchscript "
    "--out model.ts": [],
}
SETUP_RUNS = 2  # the first two make the data and the run the others read


@dataclass(frozen=True)
class Command:
    page: Path
    line: int
    words: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def text(self) -> str:
        return " ".join(self.words)


# ---------------------------------------------------------------------------------------------
# Reading the pages


def fenced_blocks(page: Path) -> tuple[list[tuple[str, int, list[tuple[int, str]]]], list[str]]:
    """(language, line of the fence, [(line, text)]) per fenced block, and the page's problems."""
    blocks, problems, current = [], [], None
    for n, line in enumerate(page.read_text().splitlines(), 1):
        fence = re.match(r"\s*```\s*([^`\s]*)\s*$", line)
        if current is None and fence:
            current = (fence.group(1), n, [])
        elif current is not None and re.match(r"\s*```\s*$", line):
            blocks.append(current)
            current = None
        elif current is not None:
            current[2].append((n, line))
    if current is not None:
        problems.append(f"{page.relative_to(ROOT)}:{current[1]}: a fenced block is never closed")
    return blocks, problems


def without_comment(line: str) -> str:
    """The line without its ``# comment`` (a ``#`` that starts a word, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def split_commands(text: str) -> list[list[str]]:
    """Shell words of each command on a line, split at ``&&``, ``||``, ``;`` and ``|``."""
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split, lex.commenters = True, ""
    commands, words = [], []
    for word in lex:
        if word in ("&&", "||", ";", "|"):
            commands.append(words)
            words = []
        else:
            words.append(word)
    commands.append(words)
    return [c for c in commands if c]


def block_commands(page: Path) -> tuple[list[Command], list[str]]:
    blocks, problems = fenced_blocks(page)
    commands = []
    for lang, fence_line, lines in blocks:
        if lang in SKIPPED_LANGS:
            continue
        if lang not in COMMAND_LANGS:
            problems.append(f"{page.relative_to(ROOT)}:{fence_line}: fenced block of language "
                            f"{lang!r}: use sh for commands, text for anything else")
            continue
        pending, start = "", 0
        for n, line in lines:
            if lang == "console":
                if not line.startswith("$ ") and not pending:
                    continue  # output
                line = line.removeprefix("$ ")
            start = start or n
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            text, pending = without_comment(pending + line).strip(), ""
            try:
                parts = split_commands(text)
            except ValueError as e:  # an unclosed quote
                problems.append(f"{page.relative_to(ROOT)}:{start}: {e}: {text}")
                parts = []
            commands += [Command(page, start, tuple(words)) for words in parts]
            start = 0
    return commands, problems


def table_commands() -> list[Command]:
    """The README's table of commands: `VERB ...` (a trainer verb) or `make ...`, one per row."""
    commands, section = [], ""
    for n, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("## "):
            section = line[3:].strip()
        cell = re.match(r"\| `([^`]+)` \|", line)
        if section == "Commands" and cell:
            words = shlex.split(cell.group(1))
            if words[0] != "make":
                words = ["python", "-m", "trainer", *words]
            commands.append(Command(README, n, tuple(words)))
    return commands


def all_commands() -> tuple[list[Command], list[str]]:
    commands, problems = table_commands(), []
    for page in PAGES:
        found, wrong = block_commands(page)
        commands += found
        problems += wrong
    return commands, problems


COMMANDS, PROBLEMS = all_commands()


def kind_of(words: tuple[str, ...]) -> str | None:
    words = env_stripped(words)
    text = " ".join(words)
    return next((kind for kind, pattern in KINDS.items() if re.match(pattern, text)), None)


def env_stripped(words) -> tuple[str, ...]:
    """Without leading ``NAME=value`` assignments (``AVE_SETTINGS=x.yaml make deploy``)."""
    words = tuple(words)
    while words and re.match(r"[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]
    return words


# ---------------------------------------------------------------------------------------------
# The checks of each kind


def verb_args(words: tuple[str, ...]) -> list[str]:
    words = env_stripped(words)
    return list(words[1:] if words[0] == "trainer" else words[3:])


def parse_verb(argv: list[str]) -> str | None:
    """None when the real parser accepts ``argv``, else what it printed."""
    from trainer.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as e:
        if e.code not in (0, None):  # --help exits 0
            return err.getvalue().strip() or f"exit {e.code}"
    return None


@functools.cache
def module_help(module: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def check_module(words: tuple[str, ...]) -> str | None:
    words = env_stripped(words)
    module, args = words[2], words[3:]
    code, text = module_help(module)
    if code != 0:
        return f"python -m {module} --help exited {code}: {text.strip().splitlines()[-1:]}"
    flags = sorted({a.split("=")[0] for a in args if a.startswith("--")} - {"--help"})
    missing = [f for f in flags if not re.search(rf"{re.escape(f)}(?![\w-])", text)]
    return f"python -m {module} --help does not name {', '.join(missing)}" if missing else None


def check_pytest(words: tuple[str, ...]) -> str | None:
    named = [w.split("::")[0] for w in env_stripped(words)[3:] if w.startswith("tests/")]
    missing = [w for w in named if not (ROOT / w).exists()]
    return f"no such test file: {', '.join(missing)}" if missing else None


def pulumi_config_keys() -> set[str]:
    config = yaml.safe_load((ROOT / "infra" / "Pulumi.yaml").read_text())["config"]
    return set(config)


def check_tool(words: tuple[str, ...]) -> str | None:
    words = env_stripped(words)
    if words[:3] == ("pulumi", "config", "set"):
        key = next((w for w in words[3:] if not w.startswith("-")), None)
        project = yaml.safe_load((ROOT / "infra" / "Pulumi.yaml").read_text())["name"]
        if key is None:
            return "pulumi config set without a key"
        key = key.removeprefix(f"{project}:")
        if key not in pulumi_config_keys():
            return f"pulumi config key {key!r} is not in infra/Pulumi.yaml's config"
    if words[:2] == ("docker", "run") and IMAGE in words:
        problem = parse_verb(list(words[words.index(IMAGE) + 1:]))
        return f"the image's trainer arguments: {problem}" if problem else None
    return None


def recipe_commands(output: str) -> list[tuple[str, ...]]:
    """The ``python -m ...`` calls in ``make -n``'s output, each as its shell words."""
    calls = []
    for line in output.splitlines():
        if not re.search(r"python3?\s+-m\s", line):
            continue
        line = re.sub(r"\$\([^()]*\)", "X", line)  # $(date ...): its text, not run here
        for words in split_commands(line):
            if re.search(r"python3?$", words[0]) and words[1:2] == ["-m"]:
                calls.append(("python", *words[1:]))
    return calls


def check_make(words: tuple[str, ...]) -> str | None:
    args = list(env_stripped(words)[1:])
    targets = [a for a in args if "=" not in a and not a.startswith("-")] or ["setup"]
    unknown = [t for t in targets if t not in MAKE_CALLS]
    if unknown:
        return f"make target {', '.join(unknown)} is not in MAKE_CALLS: add the call it makes"
    proc = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), *args],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        return f"make -n exited {proc.returncode}: {proc.stderr.strip()}"
    calls = recipe_commands(proc.stdout)
    for target in targets:
        want = MAKE_CALLS[target]
        if want and not any(list(c[2:2 + len(want.split())]) == want.split() for c in calls):
            return f"make -n {target} does not call python -m {want}:\n{proc.stdout}"
    for call in calls:
        problem = check(call)
        if problem:
            return f"the recipe's {' '.join(call)}: {problem}"
    return None


def check(words: tuple[str, ...]) -> str | None:
    """None when the command is right, else what is wrong."""
    kind = kind_of(words)
    if kind is None:
        return (f"not a kind of command this test knows ({', '.join(KINDS)}): fence output as "
                "text, or add the kind to KINDS with its check")
    if kind == "verb":
        problem = parse_verb(verb_args(words))
        return f"trainer's parser: {problem}" if problem else None
    return {"module": check_module, "pytest": check_pytest, "make": check_make,
            "tool": check_tool}[kind](words)


# ---------------------------------------------------------------------------------------------
# Tests: the commands


def test_pages_have_no_unreadable_blocks():
    assert not PROBLEMS, "\n".join(PROBLEMS)


def test_the_pages_hold_commands():
    assert len(COMMANDS) > 40
    assert {c.page for c in COMMANDS} >= {README, DOCS / "training.md", DOCS / "aws.md"}


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_command_is_right_as_written(command):
    problem = check(command.words)
    assert problem is None, f"{command.where}: {command.text}\n{problem}"


def test_every_verb_is_in_the_readme_table():
    from trainer.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a.choices, dict))
    listed = {verb_args(c.words)[0] for c in table_commands() if kind_of(c.words) == "verb"}
    assert set(sub.choices) == listed, ("README's table of commands against the parser's verbs: "
                                        f"missing {set(sub.choices) - listed or '{}'}, "
                                        f"unknown {listed - set(sub.choices) or '{}'}")


@pytest.mark.slow
def test_every_verb_has_help():
    """``python -m trainer VERB --help`` exits 0 for every verb the README lists."""
    verbs = sorted({verb_args(c.words)[0] for c in table_commands() if kind_of(c.words) == "verb"})
    procs = {v: subprocess.Popen([sys.executable, "-m", "trainer", v, "--help"], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for v in verbs}
    failed = {}
    for verb, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0 or "usage:" not in out:
            failed[verb] = (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    assert not failed, failed


def test_fast_runs_are_in_the_docs():
    """Each command FAST_RUNS runs is one the docs hold, word for word."""
    written = {c.text for c in COMMANDS}
    assert not [cmd for cmd in FAST_RUNS if cmd not in written]


# ---------------------------------------------------------------------------------------------
# Tests: the fast commands, run


def run_doc_command(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    words = shlex.split(cmd)
    argv = [sys.executable, *words[1:], *FAST_RUNS[cmd]]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def make_inputs(work: Path) -> None:
    """The placeholders the run commands name, from the clips the demo run used: held-out/ (its
    test clips), clip.npz (one clip), more-clips/ (two more), new-speaker/ (one speaker's)."""
    lines = (work / "runs/demo/splits.csv").read_text().splitlines()[1:]
    rows = [line.split(",") for line in lines]
    test = [r for r in rows if r[3] == "test"]
    for path, *_ in test:
        (work / "held-out" / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "demo-data" / path, work / "held-out" / path)
    shutil.copy(work / "demo-data" / rows[0][0], work / "clip.npz")
    (work / "more-clips").mkdir()
    (work / "new-speaker").mkdir()
    for path, *_ in rows[1:3]:
        shutil.copy(work / "demo-data" / path, work / "more-clips" / Path(path).name)
    for path, _, speaker, _ in rows:
        if speaker == rows[0][2]:
            shutil.copy(work / "demo-data" / path, work / "new-speaker" / Path(path).name)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("docs-run")
    for cmd in list(FAST_RUNS)[:SETUP_RUNS]:
        proc = run_doc_command(cmd, work)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    make_inputs(work)
    return work


@pytest.mark.slow
@pytest.mark.parametrize("cmd", list(FAST_RUNS)[SETUP_RUNS:],
                         ids=[cmd.split()[3] for cmd in list(FAST_RUNS)[SETUP_RUNS:]])
def test_fast_command_runs(cmd, demo_run):
    proc = run_doc_command(cmd, demo_run)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"


@pytest.mark.slow
def test_setup_commands_run(demo_run):
    assert (demo_run / "runs/demo/summary.json").exists()


# ---------------------------------------------------------------------------------------------
# Tests: the README's size and every link


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def prose_lines(page: Path) -> list[str]:
    """The page's lines outside its fenced blocks (and without the fences)."""
    blocks, _ = fenced_blocks(page)
    fenced = {n for _, start, lines in blocks for n in (start, *(m for m, _ in lines))}
    fenced |= {lines[-1][0] + 1 if lines else start + 1 for _, start, lines in blocks}
    return [line for n, line in enumerate(page.read_text().splitlines(), 1) if n not in fenced]


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(page):
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            base = slug(heading.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[str]:
    """Link targets in the page's prose; inline code and fenced blocks hold no links."""
    text = re.sub(r"`[^`]*`", "", "\n".join(prose_lines(page)))
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_readme_is_a_map_of_at_most_12_kb():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move sections to docs/"


def test_readme_links_every_docs_page():
    linked = {(README.parent / link.split("#")[0]).resolve() for link in links(README)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md does not link docs/{', docs/'.join(missing)}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    broken = []
    for link in links(page):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)
