"""The benchmark runs end to end and reports sane figures (slow; no timing is asserted)."""

import json

import pytest

import torch

from trainer.bench.run import TARGETS, memory_ratios, padding
from trainer.bench.measure import HeapPeak
from trainer.cli import main

pytestmark = pytest.mark.slow


def test_bench_writes_every_figure_and_the_targets(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--smoke", "--threads", "1", "--out", str(out)]) == 0
    assert "training throughput" in capsys.readouterr().out
    r = json.loads(out.read_text())
    for key in ("throughput_ratio", "memory_ratio", "matmul_fraction", "padding_efficiency",
                "loader_overhead", "latency_ms_p50", "latency_ms_p50_exported", "machine",
                "targets", "hybrid", "lstm", "projected_epoch_seconds", "method"):
        assert key in r, key
    assert r["throughput_ratio"] > 0 and r["memory_ratio"] > 0 and r["matmul_fraction"] > 0
    assert 0 < r["padding_efficiency"] <= 1 and 0 < r["padding"]["shuffled"] <= 1
    assert -1 < r["loader_overhead"] < 1
    assert r["latency_ms_p50"] > 0 and r["latency_ms_p50_exported"] > 0
    assert r["exported_max_abs_diff"] < 1e-4
    assert r["hybrid"]["flops"] > 0 and r["hybrid"]["matmul"]["flops_per_second"] > 0
    assert r["hybrid"]["training_peak_mb"] > 0 and r["lstm"]["training_peak_mb"] > 0
    assert r["memory_basis"] == "malloc in use" and r["memory_ratio_rss"] > 0
    assert set(r["targets"]) == set(TARGETS)
    assert all(isinstance(t["holds"], bool) for t in r["targets"].values())
    assert r["machine"]["cores"] >= 1 and r["machine"]["torch"]


def test_bucketing_beats_shuffled_batches_on_crema_d_lengths():
    p = padding(seed=0, batch_size=24, epochs=2)
    assert p["bucketed"] > 0.9 > p["shuffled"]


def test_heap_peak_sees_a_tensor_that_lived_only_inside_the_block():
    heap = HeapPeak()
    before = heap.in_use()
    with heap:
        x = torch.ones(64, 2**18)  # 64 MiB
        del x
    assert heap.peak - before >= 64 * 2**20
    assert heap.in_use() - before < 8 * 2**20


def test_memory_ratio_falls_back_to_rss_without_allocation_figures():
    h, lm = {"training_peak_mb": 100.0, "allocated_peak_mb": 30.0}, \
        {"training_peak_mb": 200.0, "allocated_peak_mb": 120.0}
    assert memory_ratios(h, lm) == {"memory_ratio": 0.25, "memory_basis": "malloc in use",
                                    "memory_ratio_rss": 0.5}
    del h["allocated_peak_mb"]
    assert memory_ratios(h, lm)["memory_ratio"] == 0.5
    assert memory_ratios(h, lm)["memory_basis"] == "RSS"
