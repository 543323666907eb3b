"""The pretrained encoders' side of an extraction's settings: checking, resolving and naming the
model files (``--audio wavlm|hubert|wav2vec2 --audio-model``, ``--video hsemotion
--face-model``), and making the encoders.

    s = resolve(settings, cache)     # s3:// models synced into the cache, a hub id downloaded
    encoder_params(s)                # {"audio_model": ..., "audio_model_sha256": ..., ...}

A model is given as a local folder (speech) or file (face), an ``s3://`` prefix or object
(``make deploy`` uploads a local one to ``models/NAME-HASH/``, content-addressed), or, for
speech and only with ``--allow-download``, a hub id. ``params`` records each model's name (no
local path) and the SHA-256 of its weights, so a resume or a checkpoint tells two models apart.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from trainer.extract.face_encoder import HSEmotionFace, check_face_model
from trainer.extract.speech import (
    SPEECH_KINDS,
    model_folder,
    model_name,
    parse_layers,
    read_config,
    speech_encoder,
    speech_params,
)
from trainer.store.uri import is_s3

MODELS_DIR = "models"  # under the cache: s3:// models synced down


def check(s) -> None:
    """One-line errors for the encoder settings of ExtractSettings ``s``, before any clip is
    read (no network call: a hub id without ``allow_download``, a missing file)."""
    if s.audio in SPEECH_KINDS:
        if not s.audio_model:
            raise ValueError(f"--audio {s.audio} needs --audio-model DIR (the model's folder: "
                             "config.json, weights, preprocessor_config.json); see docs/data.md")
        local = Path(s.audio_model).expanduser()
        # A hub id with allow_download is fetched by ``resolve`` (where the run runs: deploy
        # passes it on), and checked when its encoder is made; anything else is checked here.
        if not is_s3(s.audio_model) and (local.exists() or not s.allow_download):
            cfg = read_config(model_folder(s.audio_model, s.audio), s.audio)
            parse_layers(s.audio_layers, int(cfg["num_hidden_layers"]))
    elif s.audio_model or s.audio_layers:
        raise ValueError(f"--audio-model and --audio-layers go with --audio "
                         f"{'|'.join(SPEECH_KINDS)}, not {s.audio}")
    if s.video == "hsemotion":
        if not is_s3(s.face_model or ""):
            check_face_model(s.face_model)
    elif s.face_model:
        raise ValueError(f"--face-model goes with --video hsemotion, not {s.video}")


def _local(uri: str, cache: Path) -> Path:
    """An ``s3://`` model (a folder prefix, or one object) synced into ``cache/models/``."""
    from trainer.store.s3 import S3Error, client, parse_s3_uri, sync_down  # boto3: for s3://

    bucket, key = parse_s3_uri(uri)
    if not uri.endswith("/"):  # one object: the ONNX file
        dest = cache / MODELS_DIR / bucket / key
        if not dest.is_file():
            from trainer.store.files import atomic_write_bytes  # whole or absent

            try:
                body = client().get_object(Bucket=bucket, Key=key)["Body"].read()
            except Exception as e:  # noqa: BLE001 - the reason, in one line
                raise ValueError(f"model {uri} cannot be read ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:160]})") from None
            atomic_write_bytes(dest, body)
        return dest
    try:
        return sync_down(uri, cache / MODELS_DIR)
    except S3Error as e:
        raise ValueError(f"model {uri}: {e}") from None


def resolve(s, cache: Path):
    """``s`` with each model on this machine: an ``s3://`` one synced into ``cache``, a hub id
    downloaded (``allow_download``); the names ``params`` gives them are kept."""
    changes = {}
    if s.audio in SPEECH_KINDS and s.audio_model:
        name = s.audio_model_name or model_name(s.audio_model)
        local = (_local(s.audio_model.rstrip("/") + "/", cache) if is_s3(s.audio_model) else
                 model_folder(s.audio_model, s.audio, s.allow_download))
        changes.update(audio_model=str(local), audio_model_name=name)
    if s.video == "hsemotion" and s.face_model and is_s3(s.face_model):
        changes["face_model"] = str(_local(s.face_model, cache))
    return replace(s, **changes) if changes else s


@lru_cache(maxsize=4)
def file_sha256(path: str, stamp: tuple = ()) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def encoder_params(s) -> dict:
    """What the settings' ``params()`` add for the encoders: model names, weights' hashes,
    layers; empty for the default extractors. A model still on S3 (settings not yet
    ``resolve``d: deploy naming the features' prefix) is named by its URI instead of its hash,
    since deploy's model prefixes are content-addressed; ``extract`` resolves first, so clip
    files always carry the hashes."""
    p = {}
    if s.audio in SPEECH_KINDS:
        name = s.audio_model_name or model_name(s.audio_model)
        if is_s3(s.audio_model):
            p.update(audio_model=name, audio_model_uri=s.audio_model,
                     audio_layers=s.audio_layers)
        else:
            p.update(speech_params(s.audio, model_folder(s.audio_model, s.audio),
                                   s.audio_layers, name))
    if s.video == "hsemotion":
        if is_s3(s.face_model):
            p.update(face_model=s.face_model.rsplit("/", 1)[-1], face_model_uri=s.face_model)
        else:
            f = Path(s.face_model).resolve()
            p.update(face_model=f.name, face_model_sha256=file_sha256(
                str(f), (f.stat().st_size, f.stat().st_mtime_ns)))
    return p


def audio_encoder(s):
    """The speech encoder of resolved settings ``s`` (loaded once per process)."""
    return speech_encoder(s.audio, str(model_folder(s.audio_model, s.audio)), s.audio_layers)


def make_video(s) -> HSEmotionFace:
    """A fresh face encoder for one clip (``--video hsemotion``), its model loaded once."""
    return HSEmotionFace(s.face_model)
