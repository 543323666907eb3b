"""Defaults of the operator commands, from ``deploy.yaml`` (repository root), then flags.

    make deploy                          # everything from deploy.yaml
    make deploy DATA=data/crema ARGS='--epochs 30' BACKEND=local
    make deploy FOLDS=5 SEEDS=0,1,2      # folds, seeds: cv as one AWS Batch array (batch.py)
    AVE_SETTINGS=other.yaml make deploy  # another settings file

Precedence: a flag (or the Make variable that becomes one) > the settings file > ``DEFAULTS``.
``AVE_STATE_DIR`` moves the local backend's state folder (default ``.ave``), e.g. for tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from trainer.ops import OpsError

REPO = Path(__file__).resolve().parents[2]  # the checkout: Dockerfile, infra/, scripts/

DEFAULTS = {
    "backend": "aws",       # aws (the Pulumi stack in infra/) or local (Docker + moto)
    "stack": "dev",         # Pulumi stack name
    "data": "demo-data",    # folder of clip files, or an s3:// prefix in the stack's bucket
    "args": "",             # trainer train flags
    "media": "",            # raw media folder: uploaded, extracted on the instance into features/
    "extract": "",          # extract flags for media (--audio wavlm --audio-model DIR: uploaded)
    "folds": "",            # "" a single run (one instance); K: K-fold cv as one AWS Batch array
    "seeds": "0",           # with folds: the seeds of each fold ("0,1,2": 3 tasks per fold)
    "image": "av-emotion-trainer",  # local name of the image deploy builds
    "torch_wheels": ["wheels/torch-*+cpu-*.whl"],  # CPU torch wheel for the build (first match)
    "results_dir": "results",
    "local_bucket": "ave-local",
    "local_region": "us-east-1",
}


@dataclass(frozen=True)
class Settings:
    backend: str = DEFAULTS["backend"]
    stack: str = DEFAULTS["stack"]
    data: str = DEFAULTS["data"]
    args: str = DEFAULTS["args"]
    media: str = DEFAULTS["media"]
    extract: str = DEFAULTS["extract"]
    folds: str = DEFAULTS["folds"]
    seeds: str = DEFAULTS["seeds"]
    image: str = DEFAULTS["image"]
    torch_wheels: list[str] = field(default_factory=lambda: list(DEFAULTS["torch_wheels"]))
    results_dir: str = DEFAULTS["results_dir"]
    local_bucket: str = DEFAULTS["local_bucket"]
    local_region: str = DEFAULTS["local_region"]
    state_dir: str = ".ave"  # the local backend's state (moto port and pid): env AVE_STATE_DIR
    infra_dir: str = str(REPO / "infra")


def check_types(values: dict, source) -> None:
    """Each setting of the file as the type its default has: text, or a list of globs. YAML reads
    ``args: 5`` as a number and ``args: [--epochs, 5]`` as a list; both would fail much later."""
    for name, value in values.items():
        if name in ("folds", "seeds") and isinstance(value, int) and not isinstance(value, bool):
            values[name] = str(value)  # folds: 5, seeds: 0 (YAML numbers)
            continue
        if name == "torch_wheels":
            ok = isinstance(value, str) or (isinstance(value, list)
                                            and all(isinstance(v, str) for v in value))
            what = "a glob or a list of globs"
        else:
            ok, what = isinstance(value, str), "text"
        if not ok:
            hint = ' (trainer train flags in quotes, e.g. args: "--epochs 30")' \
                if name == "args" else ""
            raise OpsError(f"{source}: {name} must be {what}, not {value!r}{hint}")


def settings_path(path: str | None = None) -> Path | None:
    """The settings file in use: ``path``, else $AVE_SETTINGS, else ./deploy.yaml if present."""
    chosen = path or os.environ.get("AVE_SETTINGS")
    if chosen:
        if not Path(chosen).is_file():
            raise OpsError(f"settings file {chosen} not found")
        return Path(chosen)
    default = Path("deploy.yaml")
    return default if default.is_file() else None


def load(path: str | None = None, **overrides) -> Settings:
    """Settings from the file, with ``overrides`` (None means "not given") on top.

    Example:
        >>> load(backend="local", data=None).backend
        'local'
    """
    values: dict = {}
    source = settings_path(path)
    if source is not None:
        try:
            values = yaml.safe_load(source.read_text()) or {}
        except yaml.YAMLError as e:
            raise OpsError(f"{source} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise OpsError(f"{source} must be a mapping of settings (see deploy.yaml)")
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise OpsError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: "
                       f"{', '.join(sorted(known))}")
    values = {k: ("" if v is None else v) for k, v in values.items()}
    check_types(values, source)
    if isinstance(values.get("torch_wheels"), str):  # one glob, or none
        values["torch_wheels"] = values["torch_wheels"].split()
    settings = replace(Settings(), **values)
    if os.environ.get("AVE_STATE_DIR"):
        settings = replace(settings, state_dir=os.environ["AVE_STATE_DIR"])
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if settings.backend not in ("aws", "local"):
        raise OpsError(f"backend must be aws or local, not {settings.backend!r}")
    return settings
