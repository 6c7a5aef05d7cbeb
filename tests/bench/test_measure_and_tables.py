"""Latency summaries, the timing loop, stage accounting and the ablation table."""

from __future__ import annotations

import pytest
import torch

from streamdiff.bench.ablation import ablation_cases, ablation_table
from streamdiff.bench.measure import EnergyMeter, Latency, time_calls
from streamdiff.bench.report import markdown_table, stages_table
from streamdiff.bench.stages import unet_calls
from streamdiff.config import StreamConfig


def test_latency_percentiles_and_fps():
    latency = Latency.of([0.001 * v for v in range(1, 11)])  # 1..10 ms
    assert (latency.median_ms, latency.calls) == (pytest.approx(5.5), 10)
    assert latency.p10_ms == pytest.approx(1.9) and latency.p90_ms == pytest.approx(9.1)
    assert latency.fps(frames_per_call=4) == pytest.approx(4000 / 5.5)
    with pytest.raises(ValueError, match="no timed calls"):
        Latency.of([])


def test_time_calls_runs_warmup_then_at_least_the_calls_and_the_minimum_time():
    seen = []
    measured = time_calls(seen.append, ["a", "b"], warmup=2, calls=3, device=torch.device("cpu"))
    assert seen == ["a", "b", "a", "b", "a"] and measured.latency.calls == 3 and measured.joules is None
    longer = time_calls(lambda x: sum(range(2000)), [0], warmup=0, calls=2, device=torch.device("cpu"),
                        min_seconds=0.01)
    assert longer.latency.calls > 2


def test_pipelined_timing_leaves_the_device_running_between_calls(monkeypatch):
    from streamdiff.bench import measure

    waits = []
    monkeypatch.setattr(measure, "synchronize", waits.append)
    time_calls(lambda x: x, [0], warmup=1, calls=4, device=torch.device("cpu"))
    assert len(waits) == 5  # after the warm-up, then after every timed call
    waits.clear()
    time_calls(lambda x: x, [0], warmup=1, calls=4, device=torch.device("cpu"), wait_each=False)
    assert len(waits) == 1


def test_energy_is_not_reported_without_a_gpu():
    meter = EnergyMeter(torch.device("cpu"))
    assert not meter.available and meter.read_joules() is None


@pytest.mark.parametrize("settings,calls", [
    ({"t_index_list": (0,)}, [1]),
    ({"t_index_list": (0, 25), "frame_buffer_size": 2}, [4]),
    ({"t_index_list": (0, 25), "cfg_type": "full", "guidance_scale": 1.4}, [4]),
    ({"t_index_list": (0, 25), "cfg_type": "initialize", "guidance_scale": 1.4}, [3]),
    ({"t_index_list": (0, 25), "cfg_type": "full", "guidance_scale": 1.0}, [2]),  # scale 1: no guidance
    ({"t_index_list": (0, 12, 25), "use_denoising_batch": False, "cfg_type": "initialize", "guidance_scale": 2},
     [2, 1, 1]),
])
def test_unet_batches_per_frame(settings, calls):
    assert unet_calls(StreamConfig(**settings)) == calls


def test_each_ablation_group_has_one_reference_and_unique_labels():
    cases = ablation_cases()
    groups = {c.group for c in cases}
    assert all(sum(c.reference for c in cases if c.group == g) == 1 for g in groups)
    assert len({c.scenario.label for c in cases}) == len(cases)
    assert {c.variant for c in cases if c.group == "acceleration"} == {"none", "eager", "compile", "graphs", "max"}


def _result(case, mean_ms, **extra):
    lat = {"median_ms": mean_ms, "mean_ms": mean_ms, "p10_ms": mean_ms, "p90_ms": mean_ms, "calls": 5}
    return {"scenario": case.scenario.as_dict(), "name": case.scenario.name(), "kind": "streamdiff",
            "latency": lat, "ms_per_frame": mean_ms, "fps": 1000 / mean_ms, **extra}


def test_ablation_table_speedups_are_against_the_groups_reference():
    cases = [c for c in ablation_cases() if c.group == "stream batch, 2 steps"]
    sequential, batch = cases
    table, rows = ablation_table(cases, [_result(sequential, 10.0), _result(batch, 4.0)])
    assert [r["speedup"] for r in rows] == [pytest.approx(1.0), pytest.approx(2.5)]
    assert "| stream batch, 2 steps | stream batch | 4.00 |" in table
    _, rows = ablation_table(cases, [_result(sequential, 10.0)])
    assert rows[1]["error"] == "not run"


def test_markdown_table_shows_failures_in_their_row():
    failed = {"name": "x", "kind": "streamdiff", "error": "out of GPU memory"}
    assert "| x | failed: out of GPU memory |" in markdown_table([failed])


def _staged(name: str, total: float, **stages: float) -> dict:
    return {"name": name, "kind": "streamdiff", "latency": {"median_ms": total}, "stages_ms": stages}


def test_the_control_stage_has_a_column_only_where_a_case_has_it():
    plain = _staged("plain", 10.0, upload=1.0, preprocess=1.0, encode=2.0, unet=3.0)
    steered = _staged("steered", 12.0, upload=1.0, preprocess=1.0, control=2.0, encode=2.0, unet=3.0)
    assert "| case | upload | preprocess | encode | unet | other | total |" in stages_table([plain])
    table = stages_table([plain, steered])
    assert "| case | upload | preprocess | control | encode | unet | other | total |" in table
    assert "| plain | 1.000 | 1.000 | - | 2.000 | 3.000 | 3.000 | 10.000 |" in table
    assert "| steered | 1.000 | 1.000 | 2.000 | 2.000 | 3.000 | 3.000 | 12.000 |" in table
