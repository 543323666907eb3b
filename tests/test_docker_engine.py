"""scripts/docker-engine.sh: the Debian mirror for debootstrap comes from this machine's apt
sources, never from a host written into the script (DESIGN.md section 6).

    .venv/bin/python -m pytest tests/test_docker_engine.py -q

The script only defines its functions when sourced; each test sources it with AVE_APT_DIR
pointing at apt sources the test writes, and calls `debian_mirror` as make_base_image does.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "docker-engine.sh"

DEBIAN_SOURCES = """\
Types: deb
# a snapshot comment
URIs: http://mirror.internal:8080/deb-cache/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.internal:8080/deb-security
Suites: bookworm-security
Components: main
"""


def mirror(apt_dir: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AVE_")}
    environ.update(AVE_APT_DIR=str(apt_dir), **env)
    return subprocess.run(["bash", "-c", f'source "{SCRIPT}" && debian_mirror'], env=environ,
                          capture_output=True, text=True, timeout=30)


def sources(tmp_path: Path, files: dict[str, str]) -> Path:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (apt / name).write_text(text)
    return apt


def test_no_mirror_host_is_written_into_the_script():
    text = SCRIPT.read_text()
    assert "deb.debian.org" not in text and "ftp.debian.org" not in text


@pytest.mark.parametrize("files, expected", [
    # deb822, as Debian 12 ships it; the security paragraph is not a mirror of the release
    ({"sources.list.d/debian.sources": DEBIAN_SOURCES}, "http://mirror.internal:8080/deb-cache/"),
    # one-line format, with options (spaces inside the brackets) and a comment before
    ({"sources.list": "# deb http://old.example/debian bookworm main\n"
                      "deb-src http://src.example/debian bookworm main\n"
                      "deb [ arch=amd64 signed-by=/usr/share/keyrings/d.gpg ] "
                      "https://mirror.example.org/debian bookworm main contrib\n"},
     "https://mirror.example.org/debian"),
    ({"sources.list.d/local.list": "deb file:///srv/debian-mirror bookworm main\n"},
     "file:///srv/debian-mirror"),
    # a disabled paragraph is skipped; a third-party repository is not a Debian mirror
    ({"sources.list.d/a.sources": "Types: deb\nURIs: http://disabled.example/debian\n"
                                  "Suites: bookworm\nEnabled: no\nComponents: main\n",
      "sources.list.d/b.list": "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n",
      "sources.list.d/c.sources": DEBIAN_SOURCES},
     "http://mirror.internal:8080/deb-cache/"),
    # a machine of another release: a Debian archive carries bookworm too
    ({"sources.list.d/debian.sources": "Types: deb\nURIs: http://ftp.example.net/debian\n"
                                       "Suites: trixie trixie-updates\nComponents: main\n"},
     "http://ftp.example.net/debian"),
])
def test_mirror_comes_from_the_apt_sources(tmp_path, files, expected):
    proc = mirror(sources(tmp_path, files))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_an_explicit_mirror_wins(tmp_path):
    proc = mirror(sources(tmp_path, {"sources.list.d/debian.sources": DEBIAN_SOURCES}),
                  AVE_DEBIAN_MIRROR="http://given.example/debian")
    assert proc.stdout.strip() == "http://given.example/debian"


@pytest.mark.parametrize("files", [
    {},
    {"sources.list.d/nodesource.sources": "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\n"
                                          "Suites: nodistro\nComponents: main\n"},
    {"sources.list": "# deb http://deb.example/debian bookworm main\n"},
])
def test_no_mirror_in_the_sources_is_one_line_of_error(tmp_path, files):
    proc = mirror(sources(tmp_path, files))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"docker-engine: ERROR: no Debian mirror in the apt sources ({tmp_path}/apt/sources.list, "
        "sources.list.d/*.list, *.sources); set AVE_DEBIAN_MIRROR=URL"]
