"""Sources: the test pattern, pacing, image folders, PyAV files, the screen, and how --camera is read."""

from __future__ import annotations

import threading
import time
from itertools import pairwise

import numpy as np
import pytest
from app_fakes import marked
from PIL import Image

from streamdiff.app import sources
from streamdiff.app.sources import (
    AnimatedPattern,
    CameraNotFoundError,
    ImageFolder,
    Paced,
    Pacer,
    ScreenRegion,
    VideoFile,
    open_source,
    parse_region,
)
from streamdiff.errors import UserError


def test_test_pattern_is_animated_and_paced():
    pattern = AnimatedPattern(width=160, height=120, fps=50)
    start = time.perf_counter()
    pictures = [pattern.read() for _ in range(6)]
    assert time.perf_counter() - start >= 5 / 50 * 0.9
    assert pictures[0].shape == (120, 160, 3) and pictures[0].dtype == np.uint8
    assert all(not np.array_equal(a, b) for a, b in pairwise(pictures))
    assert pattern.live and pattern.order == "rgb"


def test_pacer_resumes_after_a_stall_instead_of_bursting():
    pacer = Pacer(fps=50)
    pacer.wait()
    time.sleep(0.2)  # a stall, e.g. the model loading, that the pacer must not try to make up for
    start = time.perf_counter()
    for _ in range(4):
        pacer.wait()
    assert time.perf_counter() - start >= 3 / 50 * 0.9
    with pytest.raises(ValueError, match="fps must be positive"):
        Pacer(0)


def test_image_folder_plays_sorted_images_then_ends(tmp_path):
    for k in (2, 0, 1):
        Image.fromarray(marked(50 * k, 32, 24)).save(tmp_path / f"img_{k}.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    folder = ImageFolder(tmp_path)
    reds = [int(folder.read()[0, 0, 0]) for _ in range(3)]
    assert reds == [0, 50, 100] and folder.read() is None and not folder.live
    assert ImageFolder(tmp_path / "img_1.png").read()[0, 0, 0] == 50


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="no images"):
        ImageFolder(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image"):
        ImageFolder(tmp_path).read()


def test_video_file_decodes_every_frame_in_order_with_audio_packets(clip):
    video = VideoFile(clip, audio=True)
    packets: list[object] = []
    video.on_audio = packets.append
    reds = []
    while (picture := video.read()) is not None:
        reds.append(int(picture[0, 0, 0]))
    video.close()
    assert video.fps == 25 and video.frame_count == 12
    assert [round(r / 20) for r in reds] == list(range(12))
    assert len(packets) > 5


def test_video_file_pictures_equal_pyav_own_conversion(tmp_path):
    # A textured, moving clip: VideoFile converts with one converter kept for the stream, PyAV's
    # to_ndarray with a new one per frame; the pictures must be the same.
    import av

    from streamdiff.bench.clips import make_clip as make_scene

    path = tmp_path / "scene.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for k, picture in enumerate(make_scene("moving", 6, 64, 96)):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        expected = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    video = VideoFile(path)
    got = []
    while (picture := video.read()) is not None:
        got.append(picture)
    video.close()
    assert len(got) == len(expected) == 6 and expected[3].std() > 10
    for k, (picture, reference) in enumerate(zip(got, expected)):
        np.testing.assert_array_equal(picture, reference, err_msg=f"frame {k}")


def test_video_file_conversion_follows_a_stream_that_changes_size(clip):
    # Live streams may change resolution mid-stream; the converter kept for the stream must follow.
    import av

    video = VideoFile(clip)
    rng = np.random.default_rng(0)
    for width, height in ((64, 48), (96, 80), (64, 48)):
        picture = rng.integers(0, 256, (height, width, 3), np.uint8)
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        np.testing.assert_array_equal(video.rgb(frame), frame.to_ndarray(format="rgb24"))
    video.close()


def test_video_file_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such video file"):
        VideoFile(tmp_path / "missing.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UserError, match="cannot open video") as error:
        VideoFile(corrupt)
    assert "\n" not in str(error.value)


def test_video_file_without_video_is_refused(tmp_path):
    import av

    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(UserError, match="holds no video stream"):
        VideoFile(path)


def test_open_source_reads_every_kind_of_camera_value(tmp_path, clip):
    assert isinstance(open_source("pattern"), AnimatedPattern)
    Image.fromarray(marked(7, 16, 16)).save(tmp_path / "still.png")
    still = open_source(str(tmp_path / "still.png"))
    assert isinstance(still, Paced) and isinstance(still.source, ImageFolder)
    video = open_source(str(clip))
    assert isinstance(video, Paced) and isinstance(video.source, VideoFile) and video.fps == 25
    video.close()
    assert isinstance(open_source(str(clip), pace_files=False), VideoFile)
    with pytest.raises(FileNotFoundError, match="no such file, folder or camera: nowhere.mp4"):
        open_source("nowhere.mp4")


def test_an_unknown_camera_index_lists_the_cameras_found(monkeypatch):
    monkeypatch.setattr(sources, "list_cameras", lambda max_index=8: ["/dev/video0", "/dev/video2"])
    with pytest.raises(CameraNotFoundError, match="camera 7 not found; cameras found: /dev/video0, /dev/video2"):
        open_source("7")


def test_camera_listing_on_this_machine_is_consistent():
    found = sources.list_cameras()
    with pytest.raises(CameraNotFoundError, match="cameras found: " + (", ".join(found) if found else "none")):
        open_source("63")


def test_screen_region_grabs_from_the_capture_thread(xvfb):
    pytest.importorskip("mss", reason="mss comes with the camera extra")
    screen = ScreenRegion(parse_region("0,0,64,48"), fps=30)
    grabbed: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: grabbed.append(screen.read()))
    worker.start()
    worker.join(timeout=10)
    screen.close()
    assert grabbed and grabbed[0].shape == (48, 64, 3) and grabbed[0].flags["C_CONTIGUOUS"]
    assert screen.order == "bgr"


def test_screen_region_parsing():
    assert parse_region("10,20,300,200") == (10, 20, 300, 200)
    for bad in ("10,20,300", "a,b,c,d", "0,0,0,10"):
        with pytest.raises(ValueError, match="screen region"):
            parse_region(bad)
