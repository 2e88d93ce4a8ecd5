"""benchmarks/gpu_check.py runs end to end on the CPU (tiny sizes), and the pieces it relies on:
the test-device mode, the host-sync finder, and device resolution with its one-line CPU fallback."""
from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.device import resolve_device
from core.syncs import host_syncs
from device_mode import OnTestDevice
from helpers import encode, tiny_tagger

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_ADDRESS": "local"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--threads", "1",
                           "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    block = out.read_text()
    assert block.strip() == done.stdout.strip()  # the block on stdout is the one written
    for title in ("Correctness on the device", "Host-device syncs", "bfloat16 autocast", "Soft-beam training cost",
                  "CRF against pytorch-crf", "Inference speed", "Four trials on one GPU"):
        assert f"#### {title}" in block and "(ok, " in block.split(f"#### {title}", 1)[1].split("\n", 1)[0], title
    assert " passed" in block and " failed" not in block.split("#### Host-device", 1)[0]
    for row in ("| DL k=3 | fp32 |", "| 17 | 8 |", "| Viterbi |", "| beam_search k=3 | 0 | 0 |"):
        assert row in block, row
    sweep = block.split("#### Four trials", 1)[1]
    assert "4 trials, 0 errors" in sweep and "statuses ['TERMINATED']" in sweep
    fallbacks = int(sweep.split("Ray's GPU is fake, ", 1)[1].split(" ", 1)[0])
    assert fallbacks >= 4  # every trial said once that it runs on the CPU


def test_gpu_check_rejects_unknown_sections(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--device", "cpu", "--sections", "tests,nope"])
    assert exit_info.value.code == 2 and "unknown nope" in capsys.readouterr().err


class TestDevicePlacement:
    def test_test_tensors_and_module_parameters_go_to_the_device(self, tmp_path, monkeypatch):
        # A module in a stand-in repository, outside tests/, plays beamtune's code: what it
        # creates keeps its own device.
        import device_mode

        (tmp_path / "outside_tests.py").write_text("import torch\n\ndef make():\n    return torch.zeros(2)\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setattr(device_mode, "REPO", str(tmp_path))
        import outside_tests

        with OnTestDevice("meta"):
            made_here = torch.zeros(2)
            drawn = torch.randn(3, generator=torch.Generator().manual_seed(0))
            layer = torch.nn.Linear(2, 3)
            made_outside = outside_tests.make()
        assert made_here.device.type == "meta" and drawn.device.type == "meta"
        assert layer.weight.device.type == "meta"
        assert made_outside.device.type == "cpu"

    def test_same_random_numbers_as_without_the_mode(self):
        expected = torch.randn(4, generator=torch.Generator().manual_seed(3))
        with OnTestDevice("cpu"):
            again = torch.randn(4, generator=torch.Generator().manual_seed(3))
        assert torch.equal(expected, again)


class TestHostSyncs:
    def test_counts_each_sync_by_line(self):
        x = torch.arange(5.0)
        with host_syncs() as found:
            for t in range(3):
                x[t].item()
            x.tolist()
            bool(x.sum() > 0)
        assert found.total == 5
        assert sorted(found.counts.values()) == [1, 1, 3]
        assert any(key.startswith("tests/test_gpu_check.py:") and key.endswith("Tensor.item") for key in found.counts)

    def test_search_loops_have_none(self, monkeypatch):
        """The per-position loops of greedy, beam, soft beam, Viterbi and GD never make the host
        wait for the device. The soft beam's sparse path reads its survivor count on the host, which
        is free only for CPU tensors (SPARSE_DEVICES): off it, as on a GPU, there is no sync."""
        import core.search.soft_beam as soft_beam_module
        from core.crf import LinearChainCRF

        monkeypatch.setattr(soft_beam_module, "SPARSE_DEVICES", ())
        from core.search.beam import beam_search, greedy_decode
        from core.search.gradient import gradient_descent
        from core.search.soft_beam import soft_beam_search

        model = tiny_tagger(n_labels=4)
        memory = encode(model, [7, 5, 2])
        crf = LinearChainCRF(4)
        unary = torch.randn(3, 7, 4)
        with host_syncs() as found:
            greedy_decode(model, memory)
            beam_search(model, memory, 3)
            soft_beam_search(model, memory, 3, 10.0)
            crf.viterbi(unary, memory.mask)
            gradient_descent(crf, unary, memory.mask, steps=(2, 4), lrs=(1.0, 10.0))
        assert found.total == 0, found.counts

    def test_log_partition_syncs_once_per_call(self):
        """log Z checks the scores' span once per call (core.crf.exact_span: the fast path or the exact
        fallback), before its loop: one sync whatever the length, none per position."""
        from core.crf import LinearChainCRF

        crf = LinearChainCRF(4)
        for T in (3, 12):
            mask = torch.ones(2, T, dtype=torch.bool)
            with host_syncs() as found:
                crf.log_partition(torch.randn(2, T, 4), mask)
            assert found.total == 1, (T, found.counts)


class TestResolveDevice:
    def test_auto_and_cpu(self, monkeypatch):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        expected = "cuda" if torch.cuda.is_available() else "cpu"
        assert resolve_device("auto").type == expected
        assert resolve_device("cpu") == torch.device("cpu")

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without usable CUDA")
    def test_assigned_gpu_without_cuda_falls_back_with_one_line(self, monkeypatch, caplog):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
        with caplog.at_level(logging.WARNING, logger="beamtune.device"):
            assert resolve_device("auto") == torch.device("cpu")
        assert len(caplog.records) == 1 and "running on the CPU" in caplog.records[0].getMessage()

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without usable CUDA")
    def test_explicit_cuda_without_cuda_is_an_error(self, monkeypatch):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        with pytest.raises(ValueError, match="no usable CUDA"):
            resolve_device("cuda")
