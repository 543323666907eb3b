"""Tiny random stand-ins for the pretrained encoders, made on the spot (nothing downloaded): for
the tests and for bench's extraction speed when no real model is given.

    tiny_speech(Path("/tmp/wavlm"), "wavlm")     # a transformers folder, hidden size 32, 2 layers
    tiny_hsemotion(Path("/tmp/enet.onnx"))       # HSEmotion's ONNX signature, random weights

The speech models keep the standard convolution stack (kernels 10,3,3,3,3,2,2, strides
5,2,2,2,2,2,2: 400-sample frames every 320 samples) with narrow channels, so their frame times
are those of the real models; their speed is not (a base model is about 3,000 times larger).
The ONNX model has HSEmotion's signature: ``input`` [N, 3, 224, 224] float32, ``output``
[N, 8] class scores and ``features`` [N, 16] (the embedding a real export may expose).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPEECH_CONFIGS = {"wavlm": "WavLMConfig", "hubert": "HubertConfig",
                  "wav2vec2": "Wav2Vec2Config"}


def tiny_speech(folder: Path, kind: str = "wavlm", seed: int = 0, layers: int = 2,
                local: bool = False) -> Path:
    """A random ``kind`` model (hidden size 32, ``layers`` layers) and its feature extractor's
    settings, saved in ``folder`` as ``save_pretrained`` does for a real one. ``local``: the
    large models' variant whose conv features see only their own frame (layer norm per frame,
    no normalisation of the whole clip), so that a click changes the frames around it most."""
    import torch  # torch: only where a model is made
    import transformers  # transformers (the extract extra): only where a model is made

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    config = getattr(transformers, SPEECH_CONFIGS[kind])(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer" if local else "group")
    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(config)
    model.save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=not local).save_pretrained(folder)
    return folder


def tiny_hsemotion(path: Path, seed: int = 0, side: int = 224, classes: int = 8,
                   embedding: int = 16) -> Path:
    """A random ONNX image classifier with HSEmotion's input and outputs: an 8x8 strided
    convolution, global average pooling (``features``), a linear layer (``output``)."""
    import onnx  # onnx (the export extra): only where the stand-in is made
    from onnx import TensorProto, helper, numpy_helper  # the same, its graph builders

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.1, (embedding, 3, 8, 8)).astype(np.float32)
    fc = rng.normal(0, 0.5, (embedding, classes)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["conv"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "fc"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_hsemotion",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, side, side])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", classes]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", embedding])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime the export extra allows
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
