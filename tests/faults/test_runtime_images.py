"""Hostile images: what is not a regular file, frames that grow past the megapixel guard after a small
first one, sizes that explode on resize, formats that hand the file to another program. Each is one line
naming the file, the documented exit code, no hang, no memory beyond what the input really is."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from runtime import HieraRuntimeError
from runtime.cli import main
from runtime.preprocess import load_clip

from ..conftest import ROOT
from ..runtime.conftest import exported  # noqa: F401 (a fixture)

HUGE = (13_000, 13_000)  # 169 megapixels: 169 MB as one 8-bit channel, more once converted


def cli(capsys, *args, timeout: float = 60) -> tuple[int, str, str]:
    """`python -m runtime ARGS` in this process; a call that hangs fails the test instead of hanging it."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(code=main([str(a) for a in args])), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"hangs: {args}"
    out, err = capsys.readouterr()
    return result["code"], out, err


@pytest.fixture(scope="module")
def classifier(exported):  # noqa: F811
    artifact, _, _ = exported("small_q_pool", batch=None)
    return artifact


def test_a_fifo_named_like_an_image_fails_at_once(classifier, tmp_path, capsys):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    capsys.readouterr()
    code, out, err = cli(capsys, "predict", fifo, "--model", classifier)
    assert (code, out, err) == (1, "", f"error: {fifo}: a FIFO, not a regular file\n")


def test_a_device_named_like_an_image_fails_at_once(classifier, tmp_path, capsys):
    device = tmp_path / "zero.png"
    device.symlink_to("/dev/zero")
    capsys.readouterr()
    code, out, err = cli(capsys, "predict", device, "--model", classifier)
    assert (code, out, err) == (1, "", f"error: {device}: a character device, not a regular file\n")


def test_a_directory_walk_skips_fifos_and_devices(classifier, photo, capsys):
    os.mkfifo(photo.parent / "pipe.jpg")
    (photo.parent / "zero.png").symlink_to("/dev/zero")
    capsys.readouterr()
    code, out, err = cli(capsys, "predict", photo.parent, "--model", classifier, "--top-k", "1")
    assert code == 0 and err == ""
    assert out.splitlines()[0] == str(photo) and len(out.splitlines()) == 2


def test_a_fifo_as_the_model_fails_at_once(photo, tmp_path, capsys):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    code, out, err = cli(capsys, "predict", photo, "--model", fifo)
    assert (code, out, err) == (2, "", f"error: {fifo}: a FIFO, not a regular file\n")


def huge_later_page_tiff(path):
    """A 1.4 MB multi-page TIFF: a 64 x 64 first page, then two of 169 megapixels (deflate of zeros)."""
    big = Image.new("L", HUGE)
    Image.new("RGB", (64, 64), "red").save(path, save_all=True, append_images=[big, big], compression="tiff_deflate")
    return path


def test_a_clip_whose_later_pages_are_huge_is_refused_before_decoding(tmp_path):
    """Run in a fresh interpreter to measure its memory: decoding one such page takes 169 MB or more."""
    clip = huge_later_page_tiff(tmp_path / "clip.tif")
    code = ("import re; from runtime.preprocess import load_clip; from runtime import HieraRuntimeError\n"
            f"try: load_clip({str(clip)!r}, frames=2, stride=1)\n"
            "except HieraRuntimeError as error: print(error)\n"
            # the peak resident size of this program (ru_maxrss would count the parent's, from before exec)
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) // 1024)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    message, peak_mb = done.stdout.splitlines()
    assert message == f"{clip}: frame 2: 13000 x 13000 is 169 megapixels, above the limit of 64 " \
        "(a decompression-bomb guard)"
    assert int(peak_mb) < 150, f"{peak_mb} MB: a huge page was decoded"


def test_an_animated_gif_whose_later_frame_grows_the_canvas_is_refused(tmp_path):
    """GIF frames are drawn on one canvas that a frame's extent can enlarge (up to 65535 x 65535)."""
    frames = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)).convert("P")
              for i in range(3)]
    path = tmp_path / "clip.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    descriptor = b"\x2c\x00\x00\x00\x00\x40\x00\x40\x00"  # image at (0, 0), 64 x 64
    data = path.read_bytes()
    second = data.index(descriptor, data.index(descriptor) + 1)
    path.write_bytes(data[:second] + b"\x2c\x00\x00\x00\x00\x10\x27\x10\x27" + data[second + 9:])  # 10000 x 10000
    with pytest.raises(HieraRuntimeError) as refused:
        load_clip(path, frames=3, stride=1)
    assert str(refused.value) == f"{path}: frame 2: 10000 x 10000 is 100 megapixels, above the limit of 64 " \
        "(a decompression-bomb guard)"


def test_a_sliver_that_would_resize_to_gigapixels_is_one_line(classifier, tmp_path, capsys):
    sliver = tmp_path / "sliver.png"
    Image.new("RGB", (60_000, 1)).save(sliver)  # 60,000 pixels; its shortest edge to 73 makes 4.4 gigapixels
    capsys.readouterr()
    code, out, err = cli(capsys, "predict", sliver, "--model", classifier)
    assert (code, out) == (1, "")
    assert err == f"error: {sliver}: 60000 x 1 pixels resize to 4380000 x 73, above 64 megapixels: crop it closer " \
        "to the model's aspect first\n"


def test_a_format_that_runs_another_program_is_not_opened(classifier, tmp_path, capsys):
    eps = tmp_path / "x.jpg"  # Pillow's EPS plugin hands the file to Ghostscript
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    capsys.readouterr()
    code, out, err = cli(capsys, "predict", eps, "--model", classifier)
    assert (code, out) == (1, "")
    assert err == f"error: {eps}: not an image this runtime reads (JPEG, PNG, WEBP, BMP, GIF, TIFF, PPM, AVIF)\n"


def test_a_fifo_in_a_folder_to_embed_is_skipped(tmp_path, photo, exported, capsys):  # noqa: F811
    features, _, _ = exported("small_q_pool", task="features", batch=None)
    os.mkfifo(photo.parent / "pipe.png")
    out = tmp_path / "out" / "features.npy"
    out.parent.mkdir()
    capsys.readouterr()
    code, stdout, err = cli(capsys, "embed", photo.parent, "--model", features, "--out", out)
    assert code == 0 and err == "" and stdout.startswith(f"wrote {out}: 1 images")
