# The trainer's image: Python 3.11, CPU-only PyTorch and the `trainer` package; no CUDA, no
# TensorFlow. Entry point: `python -m trainer VERB`, run as a non-root user.
#
# Build in the real world (Docker Hub and download.pytorch.org reachable): no wheels/ folder in
# the context, so torch comes from the PyTorch CPU index, at the version pyproject.toml pins.
#   docker build -t av-emotion-trainer .
#
# Build here (DESIGN.md section 6: no registry; `bash scripts/docker-engine.sh` starts the engine
# and makes the base image under the tag FROM names; the engine has no bridge, so --network host).
# The CPU wheel on disk goes into a wheels/ folder of the build context, and is used instead of
# the index (trainer/ops/image.py, which `make deploy` and the tests use, lays the context out so):
#   mkdir -p wheels && cp /opt/wheels/torch-2.13.0+cpu-*.whl wheels/
#   docker build --network host -t av-emotion-trainer .
# Here the classic builder runs (Debian's engine 20.10, no buildx): the Dockerfile uses nothing
# that needs BuildKit, so either builder takes it.
#
# Run (the data and run directory may be local paths inside the container or s3:// prefixes):
#   docker run --rm av-emotion-trainer train --help
#   docker run --rm --network host av-emotion-trainer demo-data --out /tmp/d

# Few steps after the venv exists, on purpose: each step commits a layer, and with the vfs
# storage driver (the fallback of scripts/docker-engine.sh) each one copies the whole file system
# (about 45 s once torch is in). So the venv is made in one RUN, the package is installed in a
# small stage of its own, and the final stage sets its metadata before its one big COPY. A change
# to the code rebuilds only the package stage and that COPY.

# --- package: the trainer package and its metadata in /opt/app (on PYTHONPATH in the image) ---
FROM python:3.11-slim-bookworm AS package
COPY pyproject.toml README.m[d] /src/
COPY trainer /src/trainer
# README.m[d]: pyproject names it; a build without it still works. bin/ would hold a console
# script for this stage's python; the image runs `python -m trainer` instead.
RUN python3 -m venv /tmp/pip \
    && /tmp/pip/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps --target /opt/app /src \
    && rm -rf /opt/app/bin /tmp/pip

# --- deps: a venv at /opt/venv with CPU torch, pyproject.toml's dependencies and its `extract` --
# extra (so `extract --media s3://... --out s3://...` runs on the instance), and mediapipe.
# Both this stage and the final one use one base, so the venv's python symlink points at the
# same interpreter (/usr/local/bin/python3 in the official image, /usr/bin/python3 in the one
# made here). `wheel[s]` copies the folder's files when it exists and nothing otherwise. torch
# comes from the local wheel or the CPU index (alone, --no-deps), never from PyPI (whose Linux
# torch is the CUDA build); the rest, torch's own dependencies included, from PyPI. Then what
# training never uses is removed: C++ headers, C++ test binaries and protoc (about 180 MB).
# mediapipe (--video mediapipe, extract's default) goes in after `pip check`, with --no-deps, as
# `make setup` does: its metadata pins numpy<2 and protobuf<5, which it does not need at run
# time (tests/test_face.py runs its face mesh on numpy 2), so pip check would refuse it. Its
# wheel bundles its own EGL/GLES, and cv2 is the headless build: no libGL in the image (the
# face mesh is run once at the end of the stage to prove it). The extractor's packages take the
# image from about 1.0 to 1.8 GB, so the stage also strips the shared libraries' symbol tables
# of libtorch and llvmlite (binutils, in this stage only: about 110 MB; not the libraries that
# auditwheel patched with patchelf, which strip breaks, such as numpy's OpenBLAS), removes the
# packages' own test suites (`tests/` folders, about 130 MB) and the mediapipe models of
# solutions we never run (hands, pose, selfie, objectron: about 25 MB). TensorBoard (the
# `tracking` extra) goes in with --no-deps too, with absl-py: a run only writes event files
# (protobuf, already here), so its server's grpcio, werkzeug and data server (about 40 MB) stay
# out, and pip check would ask for them. Last, after every install and the check, what only
# downloads or installs goes (about 36 MB): huggingface_hub's Xet download backend (hf-xet),
# transformers' Hub kernels (kernels: compute kernels fetched from the Hub, never asked for here)
# and pip itself. The container loads encoders from local files and installs nothing; the
# import check below runs without them.
FROM python:3.11-slim-bookworm AS deps
# Where torch comes from when the context has no wheels/torch-*+cpu-*.whl.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The last release with the face mesh `solutions` API and its models (pyproject.toml, extract).
ARG MEDIAPIPE_VERSION=0.10.21
COPY pyproject.toml wheel[s] /tmp/deps/
# transformers (the extract extra, for the speech encoders) ships every model architecture it
# knows, 113 MB; the image keeps the three that extract loads and the Auto classes (20 MB left),
# and the build checks that each still builds from its config.
# hadolint ignore=DL3008
RUN set -eu; \
    apt-get update; \
    apt-get install -y --no-install-recommends binutils; \
    python3 -m venv /opt/venv; \
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120; \
    /opt/venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("/tmp/deps/pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/deps/requirements.txt; \
    /opt/venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("/tmp/deps/pyproject.toml", "rb"))["project"]["optional-dependencies"]["extract"]))' >> /tmp/deps/requirements.txt; \
    wheel="$(find /tmp/deps -maxdepth 1 -name 'torch-*+cpu-*.whl' -print -quit)"; \
    if [ -n "$wheel" ]; then \
        echo "torch: local wheel $wheel"; \
        /opt/venv/bin/pip install --no-cache-dir "$wheel" -r /tmp/deps/requirements.txt; \
    else \
        torch_req="$(grep -E '^torch([=<>!~ ]|$)' /tmp/deps/requirements.txt)"; \
        echo "torch: $torch_req from $TORCH_INDEX_URL"; \
        /opt/venv/bin/pip install --no-cache-dir --no-deps --index-url "$TORCH_INDEX_URL" "$torch_req"; \
        /opt/venv/bin/pip install --no-cache-dir -r /tmp/deps/requirements.txt; \
    fi; \
    /opt/venv/bin/pip check; \
    /opt/venv/bin/pip install --no-cache-dir --no-deps "mediapipe==$MEDIAPIPE_VERSION"; \
    tb_req="$(/opt/venv/bin/python -c 'import tomllib; print(tomllib.load(open("/tmp/deps/pyproject.toml", "rb"))["project"]["optional-dependencies"]["tracking"][0])')"; \
    /opt/venv/bin/pip install --no-cache-dir --no-deps "$tb_req" absl-py; \
    /opt/venv/bin/python -c 'import torch; assert torch.version.cuda is None, torch.version.cuda'; \
    site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"; \
    rm -rf "$site/torch/include" "$site/torch/test" "$site"/torch/bin/*Test "$site"/torch/bin/test_* \
        "$site"/torch/bin/protoc* /tmp/deps; \
    find "$site" -type d -name tests -prune -exec rm -rf {} +; \
    for d in "$site"/transformers/models/*/; do case "$(basename "$d")" in \
        auto|wavlm|hubert|wav2vec2) ;; *) rm -rf "$d" ;; esac; done; \
    for m in hand_landmark palm_detection pose_detection pose_landmark holistic_landmark \
        selfie_segmentation objectron; do find "$site/mediapipe/modules/$m" -name '*.tflite' -delete; done; \
    strip --strip-unneeded "$site"/torch/lib/libtorch_cpu.so "$site"/torch/lib/libtorch_python.so \
        "$site"/llvmlite/binding/libllvmlite.so; \
    /opt/venv/bin/python -m pip uninstall -y -q hf-xet kernels pip; \
    /opt/venv/bin/python -c 'import av, cv2, librosa, torch, torch.utils.tensorboard, numpy as np, mediapipe as mp; m = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True); m.process(np.zeros((64, 64, 3), np.uint8)); m.close(); librosa.feature.melspectrogram(y=np.zeros(16000, np.float32), sr=16000); import onnxruntime; from transformers import AutoModel, WavLMConfig, HubertConfig, Wav2Vec2Config; [AutoModel.from_config(c(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, conv_dim=(8,) * 7)) for c in (WavLMConfig, HubertConfig, Wav2Vec2Config)]'; \
    rm -rf /var/lib/apt/lists/*

# --- final: the venv and the package on a clean base, a non-root user -------------------------
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/opt/app \
    PATH=/opt/venv/bin:$PATH \
    LANG=C.UTF-8 \
    MPLBACKEND=Agg
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin trainer
# Numeric, so that a runtime can tell it is not root without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/trainer
# No HEALTHCHECK: a run is a batch job, and its heartbeat is status.json in the run directory.
# SIGTERM (docker stop) reaches the trainer directly: it saves a checkpoint and exits 143.
ENTRYPOINT ["/opt/venv/bin/python", "-m", "trainer"]
CMD ["--help"]
# Owned by root (COPY ignores USER): the user runs them but cannot change them. The package
# before the venv: it is small, so the big COPY is the only step after it.
COPY --from=package /opt/app /opt/app
COPY --from=deps /opt/venv /opt/venv
