"""python -m runtime embed --ray: on a real Ray cluster (a head and a worker node on loopback, started and stopped
here), a run stopped by Ctrl-C, continued, killed, and finished: the rows of `runtime embed` for the same images,
each once, bad images listed; a finished output run again does no work; the callable class on image bytes; the
resource plan that cannot starve Ray Data's read task. One cluster, one artifact and one chain of runs for the module
(each run of the command pays Ray's start of its actors)."""

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'hiera-deploy[ray]')")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (it comes with Ray Data)")
psutil = pytest.importorskip("psutil", reason="psutil is not installed (it comes with Ray)")

from export import Options, run  # noqa: E402
from runtime import FeatureExtractor, HieraRuntimeError  # noqa: E402
from runtime.embed import embed as embed_here  # noqa: E402
from runtime.embed import read  # noqa: E402
from runtime.preprocess import find_images  # noqa: E402
from runtime.ray import Embedder, plan  # noqa: E402
from runtime.ray import embed as embed_on_ray  # noqa: E402

from ..conftest import ROOT  # noqa: E402

MEGAPIXELS = "0.005"  # 5,000 pixels: the images (at most 15 x 15) pass the guard, a 100 x 100 image does not
MAX_PIXELS = 5000
GOOD_IMAGES = 48


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """A Ray head (2 CPUs) and a worker node (1 CPU) on 127.0.0.1, started in the background (while the model is
    exported) in a short folder of their own (Ray's socket paths must fit in 107 bytes), with a token of their
    own; every port they listen on is a free one, so another cluster on this machine is never touched."""

    def __init__(self):
        self.temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_USAGE_STATS_ENABLED": "0",
                    # a node on a machine this loaded misses the 5 health checks of 3 s Ray allows, and is declared
                    # dead mid-test: give it a minute
                    "RAY_health_check_failure_threshold": "20"}
        self.address = f"127.0.0.1:{free_port()}"
        self.error, self.late_worker = None, False
        self._thread = threading.Thread(target=self._start, daemon=True)
        self._thread.start()

    def _start(self):
        common = ["--node-ip-address=127.0.0.1", f"--temp-dir={self.temp}", "--disable-usage-stats"]

        def agents():  # each node's own: a worker given the head's ports exits at once (its runtime-env agent cannot
            # bind), and a job whose actor was placed on it waits until the head declares the node dead (a minute)
            return [f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
                    f"--runtime-env-agent-port={free_port()}"]

        head = ["ray", "start", "--head", f"--port={self.address.split(':')[1]}", "--num-cpus=2",
                "--include-dashboard=false", f"--dashboard-port={free_port()}",
                f"--ray-client-server-port={free_port()}"]
        worker = ["ray", "start", f"--address={self.address}", "--num-cpus=1"]
        for command in (head + common + agents(), worker + common + agents()):
            done = subprocess.run([str(Path(sys.executable).with_name("ray")), *command[1:]], env=self.env,
                                  capture_output=True, text=True, timeout=180)
            if done.returncode and command[2] != "--head" and "timed out during startup" in done.stderr:
                # `ray start` waits 30 s (a constant) for a node to register; on a loaded machine its raylet,
                # still running, registers later, and the tests need the head only
                self.late_worker = True
            elif done.returncode:
                self.error = f"{' '.join(command[:3])}: {done.stderr.strip().splitlines()[-1:]}"
                return

    def ready(self) -> str:
        self._thread.join()
        if self.error:
            pytest.fail(f"the test cluster did not start: {self.error}")
        return self.address

    def stop(self):
        """Every process of this cluster, ended by its pid: those whose command line names the cluster's folder or
        whose environment holds its token, and all their children (Ray's agents retitle themselves, which hides
        both), found before any is ended. `ray stop` would end every Ray process of this user on the machine,
        other engineers' and CI's too."""
        self._thread.join()
        token = f"RAY_AUTH_TOKEN={self.env['RAY_AUTH_TOKEN']}".encode()
        ours = {}
        for process in psutil.process_iter():
            try:
                environment = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
                if token in environment or str(self.temp) in " ".join(process.cmdline()):
                    ours.update({each.pid: each for each in [process, *process.children(recursive=True)]})
            except (OSError, psutil.Error):
                continue  # not ours to read, or gone
        ours = list(ours.values())
        for process in ours:
            with contextlib.suppress(psutil.NoSuchProcess):  # one may end between being found and being ended
                process.terminate()
        _, alive = psutil.wait_procs(ours, timeout=1)  # a test cluster, removed whole: no need to wait long
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    started = Cluster()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def digits(cluster, tmp_path_factory):
    """The digits model as a dynamic-batch features artifact (not validated: these tests are about the rows, which
    they compare with `runtime embed`'s), 48 small noise images (a dozen blocks of work, as the interrupted runs
    need; their count matters nowhere else), one file that is not an image and one above the megapixel guard."""
    out = tmp_path_factory.mktemp("digits")
    run(Options(weights=str(ROOT / "models" / "digits"), out_dir=out, task="features", batch=None,
                precisions=("fp32",), validate=False))
    images = out / "images"
    rng = np.random.default_rng(0)
    for number in range(GOOD_IMAGES):  # 8 x 8 to 15 x 15, grey and colour: resized as the digits are
        size = (8 + number % 8, 8 + number % 5)
        pixels = rng.integers(0, 256, (*size, 3) if number % 2 else size, dtype=np.uint8)
        (images / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(images / "good" / f"{number:02d}.png")
    (images / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (100, 100), "white").save(images / "large.png")
    return out / "hiera_digits_features.onnx", images


def runtime_cli(env: dict, *args) -> subprocess.CompletedProcess:
    """The command, which must not hang (as actors holding every CPU make it do)."""
    return subprocess.run([sys.executable, "-m", "runtime", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def address(cluster):
    return cluster.ready()


@pytest.fixture(scope="module")
def on_one_machine(digits, tmp_path_factory):
    """What `runtime embed` writes for the images (the function the command runs): the reference rows."""
    model, images = digits
    out = tmp_path_factory.mktemp("one") / "features.npy"
    embedding = embed_here(FeatureExtractor.load(model, max_pixels=MAX_PIXELS), find_images(images), out)
    assert len(embedding.failed) == 2
    return read(out)


def rows_by_path(embedding) -> dict:
    return {path: embedding.arrays["pooler_output"][row] for row, path in enumerate(embedding.images)}


def assert_same_rows(ours, reference):
    assert sorted(ours.images) == sorted(reference.images) and len(ours.images) == GOOD_IMAGES
    expected, got = rows_by_path(reference), rows_by_path(ours)
    worst = max(float(np.abs(got[path] - expected[path]).max()) for path in expected)
    assert worst <= 1e-6, f"largest difference {worst:g} from runtime embed's rows"
    assert {entry["image"]: entry["error"] for entry in ours.failed} == \
        {entry["image"]: entry["error"] for entry in reference.failed}


def journalled(partial: Path) -> tuple[list[dict], bytes]:
    """The lines of a run's journal (each its images and their rows' sha256) and its rows file, as they are now."""
    lines = [json.loads(line) for line in (partial / "journal").read_text().splitlines()]
    return lines, (partial / "rows").read_bytes()


def start_and_stop(env: dict, command: list, partial: Path, lines: int, how: signal.Signals):
    """The command, run until its journal has more than `lines` lines (a block of rows committed), then sent `how`
    as a terminal sends it (to its process group); its exit status, stdout and stderr."""
    driver = subprocess.Popen([sys.executable, "-m", "runtime", *map(str, command)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and driver.poll() is None:
        if (partial / "journal").exists() and (partial / "journal").read_bytes().count(b"\n") > lines:
            break
        time.sleep(0.002)
    if driver.poll() is None:  # else it ended on its own: the assertions on what it left say how
        os.killpg(driver.pid, how)
    stdout, stderr = driver.communicate(timeout=120)
    return driver.returncode, stdout, stderr


@pytest.fixture(scope="module")
def interrupted(digits, address, cluster, tmp_path_factory):
    """A run stopped by Ctrl-C once a block of rows is committed (a block of 4 images: --batch-size 1), then a run
    that continues it, killed once it committed a block of its own, then a run that finishes it (two actors):
    what each left."""
    model, images = digits
    out = tmp_path_factory.mktemp("interrupted") / "features"
    partial = out.with_name(".features.partial")
    command = ["embed", images, "--model", model, "--ray", address, "--out", out, "--max-megapixels", MEGAPIXELS]
    stages = {"ctrl-c": start_and_stop(cluster.env, [*command, "--batch-size", "1"], partial, 0, signal.SIGINT)}
    stages["ctrl-c journal"] = journalled(partial)
    stages["out after ctrl-c"] = os.path.lexists(out)
    stages["beside after ctrl-c"] = sorted(p.name for p in out.parent.iterdir())
    stages["killed"] = start_and_stop(cluster.env, [*command, "--batch-size", "1"], partial,
                                      len(stages["ctrl-c journal"][0]), signal.SIGKILL)
    stages["killed journal"] = journalled(partial)
    stages["out after kill"] = os.path.lexists(out)
    finished = runtime_cli(cluster.env, *command, "--actors", "2")
    stages["finished"] = finished.returncode, finished.stdout, finished.stderr
    return out, stages


def bad_image_lines(images: Path) -> list[str]:
    return [f"error: {images / 'broken.png'}: not an image this runtime reads (JPEG, PNG, WEBP, BMP, GIF, TIFF, PPM, "
            "AVIF)", f"error: {images / 'large.png'}: 100 x 100 is 0 megapixels, above the limit of 0 (a "
            "decompression-bomb guard)"]


def test_ctrl_c_is_one_line_and_keeps_only_whole_rows(digits, interrupted, on_one_machine):
    """Exit 130 and one line naming --out and its state (after the lines of the bad images met before); the output
    untouched; the journal lists only rows that are whole and right (each the reference's row, its sha256 the one
    recorded): nothing half-written counts."""
    out, stages = interrupted
    status, stdout, stderr = stages["ctrl-c"]
    assert status == 130 and "wrote" not in stdout, stderr  # Ray's driver prints a node's death to stdout
    *errors, last = stderr.splitlines()
    assert last == f"interrupted: {out} is as it was; the rows done so far are kept in .features.partial to continue " \
        "from"
    assert set(errors) <= set(bad_image_lines(digits[1])), stderr
    assert not stages["out after ctrl-c"] and stages["beside after ctrl-c"] == [".features.partial"]
    lines, rows = stages["ctrl-c journal"]
    names = [name for line in lines for name in line["images"]]
    assert 0 < len(names) < GOOD_IMAGES, "the run was to be stopped half-way"
    assert len(rows) >= len(names) * 128 * 4  # rows past the last line (a block cut short) are not listed
    expected = rows_by_path(on_one_machine)
    recorded = [digest for line in lines for digest in line["sha256"]]
    for position, name in enumerate(names):
        row = rows[position * 512:(position + 1) * 512]
        assert hashlib.sha256(row).hexdigest() == recorded[position], f"{name}: its row is not the one recorded"
        np.testing.assert_allclose(np.frombuffer(row, "<f4"), expected[name], rtol=0, atol=1e-6, err_msg=name)


def test_a_killed_run_run_again_ends_with_every_image_once(interrupted, on_one_machine):
    out, stages = interrupted
    assert stages["killed"][0] == -signal.SIGKILL and not stages["out after kill"]
    first, _ = stages["ctrl-c journal"]
    lines, _ = stages["killed journal"]
    assert lines[:len(first)] == first, "the second run did not keep what the first committed"
    before = {name for line in first for name in line["images"]}
    added = [name for line in lines[len(first):] for name in line["images"]]
    assert added and not before & set(added), "the second run embedded again what the first had committed"
    kept = len(before) + len(added)
    assert kept < GOOD_IMAGES, "the second run was to be killed half-way"
    status, stdout, stderr = stages["finished"]
    assert status == 1, stderr
    assert stdout.endswith(f"wrote {out}: {GOOD_IMAGES} images, {kept} of them from an earlier run, 2 failed; their "
                           f"errors in {out / 'index.json'} (pooler_output [{GOOD_IMAGES}, 128])\n")
    paths = pq.read_table(out / "part-00000.parquet").column("path").to_pylist()
    assert len(paths) == len(set(paths)) == GOOD_IMAGES + 2  # every image once
    assert_same_rows(read(out), on_one_machine)
    assert sorted(p.name for p in out.parent.iterdir()) == ["features"]  # no journal, staging or lock left


def test_the_rows_of_runtime_embed_with_the_bad_images_listed(digits, interrupted, on_one_machine, tmp_path):
    model, images = digits
    out, stages = interrupted
    status, stdout, stderr = stages["finished"]
    assert sorted(stderr.splitlines()) == bad_image_lines(images)
    embedding = read(out)
    assert_same_rows(embedding, on_one_machine)
    assert embedding.model_sha256 == on_one_machine.model_sha256
    index = json.loads((out / "index.json").read_text())
    assert index["counts"] == {"images": GOOD_IMAGES + 2, "embedded": GOOD_IMAGES, "failed": 2}
    table = pq.read_table(out / "part-00000.parquet")  # as any Parquet reader sees it: a row per image
    assert table.num_rows == GOOD_IMAGES + 2 and table.schema.field("pooler_output").type.list_size == 128
    assert str(table.schema.field("pooler_output").type.value_type) == "float"
    failed = table.filter(table.column("error").is_valid())
    assert sorted(failed.column("path").to_pylist()) == [str(images / "broken.png"), str(images / "large.png")]
    assert failed.column("pooler_output").null_count == 2
    tampered = tmp_path / "tampered"  # a row taken out of a Parquet file: read refuses the folder
    shutil.copytree(out, tampered)
    pq.write_table(table.slice(1), tampered / "part-00000.parquet")
    with pytest.raises(HieraRuntimeError, match=r"part-00000.parquet: not the file its index records \(sha256\)"):
        read(tampered)


def test_a_finished_output_run_again_does_no_work(digits, interrupted, on_one_machine, tmp_path):
    """As `runtime embed` does with its file: the rows a finished output of the same model holds are taken, not
    embedded again; with none left to embed, no cluster is asked (its address answers nothing here). An output of
    other features is refused, as `runtime embed` refuses its file."""
    model, images = digits
    out = tmp_path / "again"
    shutil.copytree(interrupted[0], out)
    nobody = f"127.0.0.1:{free_port()}"
    result = runtime_cli(os.environ, "embed", images / "good", "--model", model, "--ray", nobody, "--out", out)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"wrote {out}: {GOOD_IMAGES} images, {GOOD_IMAGES} of them from an earlier run " \
        f"(pooler_output [{GOOD_IMAGES}, 128])\n"
    again = read(out)
    assert again.failed == [] and sorted(again.images) == sorted(on_one_machine.images)
    np.testing.assert_allclose(np.stack([rows_by_path(again)[path] for path in on_one_machine.images]),
                               on_one_machine.arrays["pooler_output"], rtol=0, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(HieraRuntimeError, match=rf"^{out}: holds other features \(another model, or other outputs\); "
                       "choose another folder, or remove it to write it anew$"):
        embed_on_ray(FeatureExtractor.load(model), find_images(images / "good"), out, address=nobody,
                     outputs=["last_hidden_state"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]


def test_a_cluster_that_does_not_answer_is_one_line(digits, tmp_path):
    """One line (a HieraRuntimeError: exit 2 from the command), before anything is written. In this process, as the
    command calls it: a run of the command costs seconds of imports here."""
    model, images = digits
    port = free_port()  # nothing listens there
    with pytest.raises(HieraRuntimeError, match=rf"^Ray cluster 127.0.0.1:{port}: does not answer \(Connection "
                       r"refused\)$"):
        embed_on_ray(FeatureExtractor.load(model), find_images(images), tmp_path / "out", address=f"127.0.0.1:{port}")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_of_something_else_is_left_alone(digits, tmp_path):
    """Refused before a local cluster starts (which would take seconds), the user's file untouched."""
    model, images = digits
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"a user's file")
    with pytest.raises(HieraRuntimeError, match=rf"^{out}: exists and is not a folder that python -m runtime embed "
                       r"--ray wrote \(it has no .hiera-manifest.json\); choose another folder, or empty this one$"):
        embed_on_ray(FeatureExtractor.load(model), find_images(images), out)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["holiday.jpg", "photos"]


def test_the_callable_class_on_bytes_gives_the_rows_of_the_files(digits):
    """`Embedder` as a pipeline of one's own calls it, on `read_binary_files`' columns: the rows `extract` gives,
    undecodable and oversized images as error rows, no exception."""
    model, images = digits
    files = [images / "good" / name for name in sorted(os.listdir(images / "good"))[:3]]
    files += [images / "broken.png", images / "large.png"]
    embedder = Embedder(str(model), outputs=["pooler_output"], max_pixels=5000, threads=1)
    table = embedder({"path": np.array([str(p) for p in files], object),
                      "bytes": np.array([p.read_bytes() for p in files], object)})
    assert table.column("path").to_pylist() == [str(p) for p in files]
    errors = table.column("error").to_pylist()
    assert errors[:3] == [None] * 3
    assert errors[3] == f"{files[3]}: not an image this runtime reads (JPEG, PNG, WEBP, BMP, GIF, TIFF, PPM, AVIF)"
    assert errors[4].startswith(f"{files[4]}: 100 x 100 is 0 megapixels, above the limit")
    expected = FeatureExtractor.load(model).extract(files[:3])["pooler_output"]
    got = np.array(table.column("pooler_output").to_pylist()[:3], np.float32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert table.column("pooler_output").to_pylist()[3:] == [None, None]


@pytest.mark.parametrize("cluster_cpus, node_cpus, actors, expected", [
    (2, 2, 2, (2, 0.5, 1)),  # the hang: two actors of one CPU each left the read task none
    (2, 2, None, (1, 1.0, 2)),
    (1, 1, None, (1, 0.5, 1)),
    (3, 2, 2, (2, 1.0, 1)),  # no actor asks for more than one node has beside a read task
    (16, 8, None, (8, 1.87, 2)),
])
def test_the_plan_leaves_a_read_task_its_cpu(cluster_cpus, node_cpus, actors, expected):
    made = plan(cluster_cpus, node_cpus, actors)
    assert (made.actors, made.actor_cpus, made.threads) == expected
    assert made.actors * made.actor_cpus <= cluster_cpus - min(1, cluster_cpus / 2)
