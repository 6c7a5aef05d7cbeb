"""The three-thread runtime with fake sources, sinks and engine (and once with the tiny model)."""

from __future__ import annotations

import threading
import time
from itertools import pairwise

import numpy as np
import pytest
from app_fakes import CountingSource, FakeEngine, RecordingSink

from streamdiff.app.keys import Controls
from streamdiff.app.runtime import Runtime, RuntimeOptions, WorkerError
from streamdiff.app.sinks import NullSink
from streamdiff.errors import UserError

PROMPTS = ("first style", "second style", "third style")


def options(**changes) -> RuntimeOptions:
    settings = {"prompts": PROMPTS, "pane_height": 64, "display_fps": 100.0, "transition_frames": 5}
    settings.update(changes)
    return RuntimeOptions(**settings)


def worker_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("streamdiff-")}


def test_frames_flow_from_source_through_engine_to_sink():
    engine, sink = FakeEngine(), RecordingSink()
    summary = Runtime(engine, CountingSource(), [sink], options()).run(duration=1.0)
    assert summary.captured > 50 and summary.inferred > 20 and summary.displayed > 20
    assert sink.writes == summary.displayed
    # Blend 0: the output pane is the engine's picture, 1 - input: red is 255 - a taken frame's red.
    red = int(sink.last[0, 0, 0])
    assert 255 - red in {value % 256 for value in engine.inputs}
    assert np.all(sink.last[..., 0] == red) and np.all(sink.last[..., 2] == 255)


def test_inference_always_takes_the_newest_frame_and_drops_stale_ones():
    engine = FakeEngine(delay=0.03)  # about 30 inferences/s against a source of about 500 frames/s
    source = CountingSource(period=0.002)
    runtime = Runtime(engine, source, [NullSink()], options())
    summary = runtime.run(duration=1.0)
    taken = engine.inputs
    assert len(taken) >= 5
    assert all(b > a for a, b in pairwise(taken)), "frames are taken in capture order"
    gaps = [b - a for a, b in pairwise(taken)]
    assert min(gaps) > 1, f"a slow engine must skip stale frames, got gaps {gaps}"
    assert summary.dropped >= sum(g - 1 for g in gaps)
    assert summary.captured > 5 * summary.inferred


def test_display_keeps_its_rate_while_inference_is_slow():
    engine = FakeEngine(delay=0.2)  # 5 inferences per second
    summary = Runtime(engine, CountingSource(period=0.01), [NullSink()], options(display_fps=40.0)).run(duration=1.5)
    assert summary.rate(summary.displayed) > 30
    assert summary.rate(summary.inferred) < 8


def test_shutdown_joins_every_thread_within_a_second():
    engine = FakeEngine(delay=0.05)
    runtime = Runtime(engine, CountingSource(period=0.01), [RecordingSink(keys={10: "q"})], options())
    start = time.perf_counter()
    summary = runtime.run(duration=10)
    assert time.perf_counter() - start < 5, "q must stop the run long before the duration"
    assert summary.shutdown_seconds < 1.0 and summary.unjoined == ()
    assert not any(t.is_alive() for t in runtime.threads)
    assert worker_threads() == set()
    assert {t.name for t in runtime.threads} == {"streamdiff-capture", "streamdiff-inference"}


def test_closing_the_window_quits():
    sink = RecordingSink(keys={3: "close"})
    summary = Runtime(FakeEngine(), CountingSource(), [sink], options()).run(duration=10)
    assert summary.displayed == 3 and sink.closed


def test_ctrl_c_in_the_display_loop_stops_cleanly():
    class InterruptingSink(RecordingSink):
        def write(self, image):
            super().write(image)
            if self.writes == 5:
                raise KeyboardInterrupt

    runtime = Runtime(FakeEngine(), CountingSource(), [InterruptingSink()], options())
    summary = runtime.run(duration=10)
    assert summary.displayed == 4 and summary.unjoined == ()


@pytest.mark.parametrize(
    "make, thread, cause",
    [
        (lambda: (FakeEngine(fail_after=3), CountingSource(), RecordingSink()), "inference", "ValueError"),
        (lambda: (FakeEngine(), CountingSource(fail_after=20), RecordingSink()), "capture", "OSError"),
        (lambda: (FakeEngine(), CountingSource(), RecordingSink(fail_at=5)), "display", "RuntimeError"),
    ],
)
def test_an_exception_in_any_thread_reaches_the_caller(make, thread, cause):
    engine, source, sink = make()
    runtime = Runtime(engine, source, [sink], options())
    start = time.perf_counter()
    with pytest.raises(WorkerError, match=f"the {thread} thread failed: {cause}: .*on purpose"):
        runtime.run(duration=30)
    assert time.perf_counter() - start < 5, "a failure must end the run, never hang it"
    assert not any(t.is_alive() for t in runtime.threads)
    assert source.closed and sink.closed


def test_a_user_error_in_a_worker_keeps_its_own_message():
    class BrokenFile(CountingSource):
        def read(self):
            raise UserError("clip.mp4 is corrupt or unsupported: Invalid data")

    with pytest.raises(UserError, match="clip.mp4 is corrupt"):
        Runtime(FakeEngine(), BrokenFile(), [NullSink()], options()).run(duration=5)


def test_a_file_source_ends_the_run_cleanly_after_its_last_frame():
    engine = FakeEngine()
    source = CountingSource(stop_after=30)
    source.live = False
    summary = Runtime(engine, source, [NullSink()], options()).run(duration=30)
    assert summary.captured == 30
    assert engine.inputs[-1] == 29, "the last frame is stylized before the end"
    assert summary.seconds < 5


def test_a_lost_live_source_shows_a_notice_and_is_reopened_every_retry_interval():
    first = CountingSource(stop_after=5)
    reopened: list[float] = []

    def reopen():
        reopened.append(time.perf_counter())
        if len(reopened) < 2:
            raise UserError("camera 0 not found; cameras found: none")
        return CountingSource()

    runtime = Runtime(FakeEngine(), first, [NullSink()], options(retry_interval=0.2), reopen=reopen)
    notices: list[str] = []
    watcher = threading.Thread(target=_watch_notices, args=(runtime, notices), daemon=True)
    watcher.start()
    summary = runtime.run(duration=1.5)
    watcher.join()
    assert first.closed and len(reopened) == 2
    assert reopened[1] - reopened[0] >= 0.19
    assert any("counting lost" in n and "retrying every 0.2 s" in n for n in notices)
    assert summary.captured > 5 + 10, "frames flow again after the reopen"
    assert runtime.shared.notice.peek()[1] == "", "the notice clears once the source is back"


def _watch_notices(runtime: Runtime, notices: list[str]) -> None:
    seen = 0
    while not runtime.shared.stop.wait(0.01):
        version, text = runtime.shared.notice.peek()
        if version != seen:
            seen = version
            notices.append(text)


def test_keys_change_controls_and_only_the_inference_thread_touches_the_engine():
    engine = FakeEngine()
    keys = {2: "n", 4: "+", 6: "e", 8: "f", 10: "r", 12: "p", 14: "p", 16: "[", 30: "q"}
    runtime = Runtime(engine, CountingSource(), [RecordingSink(keys=keys)], options(display_fps=60.0))
    runtime.run(duration=10)
    c = runtime.controls
    assert (c.prompt_index, c.blend, c.ema, c.feedback) == (2, 0.1, 0.05, 0.05)
    assert c.seed != 2
    assert engine.engine_threads() == {"streamdiff-inference"}
    prompts = [args for method, _, args in engine.calls if method == "update_prompt"]
    assert prompts == [("second style", 5), ("first style", 5), ("third style", 5)]
    assert ("set_temporal", "streamdiff-inference", (0.05, 0.05)) in engine.calls
    assert ("set_seed", "streamdiff-inference", (c.seed,)) in engine.calls
    assert [args for method, _, args in engine.calls if method == "set_strength"] == [(0.95,)]


def test_pause_stops_inference_and_freezes_the_picture():
    engine = FakeEngine()
    sink = RecordingSink(keys={5: " "})
    runtime = Runtime(engine, CountingSource(), [sink], options())
    runtime.run(duration=0.3)
    paused_at = len(engine.inputs)
    frozen = sink.last.copy()
    time.sleep(0.05)
    assert runtime.controls.paused
    assert len(engine.inputs) <= paused_at + 1
    assert np.array_equal(sink.last, frozen)


def test_blend_mixes_camera_into_the_output_and_the_monitor_shows_both_panes():
    monitor, output = RecordingSink(monitor=True), RecordingSink()
    controls = Controls(blend=0.5, overlay=False)
    runtime = Runtime(FakeEngine(), CountingSource(period=0.05), [monitor, output], options(display_fps=50),
                      controls=controls)
    runtime.run(duration=0.6)
    assert monitor.last.shape == (64, 128, 3) and output.last.shape == (64, 64, 3)
    camera, mixed = monitor.last[:, :64], monitor.last[:, 64:]
    assert np.array_equal(mixed, output.last)
    # Blue: camera 0, AI 255, so half of each is 128 whatever the frames' markers.
    assert np.all(camera[..., 2] == 0) and np.all(np.abs(mixed[..., 2].astype(int) - 128) <= 1)


def test_save_key_writes_the_output_picture_as_png(tmp_path):
    import cv2

    sink = RecordingSink(keys={5: "s"})
    runtime = Runtime(FakeEngine(), CountingSource(), [sink], options(save_dir=tmp_path / "shots"))
    runtime.run(duration=0.3)
    files = sorted((tmp_path / "shots").glob("streamdiff_*.png"))
    assert len(files) == 1 and runtime.display.saved == files
    saved = cv2.imread(str(files[0]))
    assert saved.shape == (64, 64, 3)


def test_runtime_with_the_tiny_model(tiny_engine):
    sink = RecordingSink(keys={3: "]", 4: "]"})
    runtime = Runtime(tiny_engine, CountingSource(period=0.01), [sink], options(display_fps=30))
    assert runtime.controls.strength == pytest.approx(0.6)  # the engine's, not a default
    summary = runtime.run(duration=2.0)
    assert summary.inferred >= 3 and summary.unjoined == ()
    assert runtime.controls.strength == pytest.approx(0.7)
    assert tiny_engine.config.t_index_list == (15, 32) and tiny_engine.strength == pytest.approx(0.7)
    assert runtime.shared.ai.peek()[1].image.shape == (64, 64, 3)
    timings = summary.timings
    assert timings.frames == summary.inferred and timings.engine > 0
