"""python -m runtime embed --ray: on a real Ray cluster (a head and a worker node on loopback, started and stopped
here), the rows of `runtime embed` for the same images, bad images listed, a killed run resumed to the same rows;
the callable class on image bytes; the resource plan that cannot starve Ray Data's read task."""

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
from runtime.embed import read  # noqa: E402
from runtime.ray import Embedder, plan  # noqa: E402

from ..conftest import ROOT, failed_rows  # noqa: E402

MEGAPIXELS = "0.005"  # 5,000 pixels: the digits (8 x 8) pass the guard, a 100 x 100 image does not


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
        common = ["--node-ip-address=127.0.0.1", f"--temp-dir={self.temp}", "--disable-usage-stats",
                  f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
                  f"--runtime-env-agent-port={free_port()}"]
        head = ["ray", "start", "--head", f"--port={self.address.split(':')[1]}", "--num-cpus=2",
                "--include-dashboard=false", f"--dashboard-port={free_port()}",
                f"--ray-client-server-port={free_port()}"]
        worker = ["ray", "start", f"--address={self.address}", "--num-cpus=1"]
        for command in (head + common, worker + common):
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
            process.terminate()
        _, alive = psutil.wait_procs(ours, timeout=3)
        for process in alive:
            process.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    started = Cluster()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def digits(cluster, tmp_path_factory):
    """The digits model as a dynamic-batch features artifact, its 450 held-out images, one file that is not an image
    and one above the megapixel guard."""
    out = tmp_path_factory.mktemp("digits")
    report = run(Options(weights=str(ROOT / "models" / "digits"), out_dir=out, task="features", batch=None,
                         precisions=("fp32",)))
    assert report["passed"], failed_rows(report)
    images = out / "held-out"
    subprocess.run([sys.executable, ROOT / "tools" / "digits.py", "images", images], check=True, capture_output=True)
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
    """What `runtime embed` writes for the images: the reference rows."""
    model, images = digits
    out = tmp_path_factory.mktemp("one") / "features.npy"
    result = subprocess.run([sys.executable, "-m", "runtime", "embed", images, "--model", model, "--out", out,
                             "--max-megapixels", MEGAPIXELS], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1, result.stderr  # two images fail
    return read(out)


def rows_by_path(embedding) -> dict:
    return {path: embedding.arrays["pooler_output"][row] for row, path in enumerate(embedding.images)}


def assert_same_rows(ours, reference):
    assert sorted(ours.images) == sorted(reference.images) and len(ours.images) == 450
    expected, got = rows_by_path(reference), rows_by_path(ours)
    worst = max(float(np.abs(got[path] - expected[path]).max()) for path in expected)
    assert worst <= 1e-6, f"largest difference {worst:g} from runtime embed's rows"
    assert {entry["image"]: entry["error"] for entry in ours.failed} == \
        {entry["image"]: entry["error"] for entry in reference.failed}


def test_the_rows_of_runtime_embed_with_the_bad_images_listed(digits, cluster, address, on_one_machine, tmp_path):
    model, images = digits
    out = tmp_path / "features"
    result = runtime_cli(cluster.env, "embed", images, "--model", model, "--ray", address, "--actors", "2", "--out",
                         out, "--max-megapixels", MEGAPIXELS)
    assert result.returncode == 1, result.stderr
    assert sorted(result.stderr.splitlines()) == [
        f"error: {images / 'broken.png'}: not an image this runtime reads (JPEG, PNG, WEBP, BMP, GIF, TIFF, PPM, AVIF)",
        f"error: {images / 'large.png'}: 100 x 100 is 0 megapixels, above the limit of 0 (a decompression-bomb guard)"]
    assert result.stdout.endswith(f"wrote {out}: 450 images, 2 failed; their errors in {out / 'index.json'} "
                                  "(pooler_output [450, 128])\n")  # Ray's driver prints a node's death before it
    embedding = read(out)
    assert_same_rows(embedding, on_one_machine)
    assert embedding.model_sha256 == on_one_machine.model_sha256
    index = json.loads((out / "index.json").read_text())
    assert index["counts"] == {"images": 452, "embedded": 450, "failed": 2}
    table = pq.read_table(out / "part-00000.parquet")  # as any Parquet reader sees it: a row per image
    assert table.num_rows == 452 and table.schema.field("pooler_output").type.list_size == 128
    assert str(table.schema.field("pooler_output").type.value_type) == "float"
    failed = table.filter(table.column("error").is_valid())
    assert sorted(failed.column("path").to_pylist()) == [str(images / "broken.png"), str(images / "large.png")]
    assert failed.column("pooler_output").null_count == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features"]  # no partial, staging or lock left
    tampered = tmp_path / "tampered"  # a row taken out of a Parquet file: read refuses the folder
    shutil.copytree(out, tampered)
    pq.write_table(table.slice(1), tampered / "part-00000.parquet")
    with pytest.raises(HieraRuntimeError, match=r"part-00000.parquet: not the file its index records \(sha256\)"):
        read(tampered)


def test_a_killed_run_run_again_ends_with_every_image_once(digits, cluster, address, on_one_machine, tmp_path):
    model, images = digits
    out = tmp_path / "resumed"
    journal = tmp_path / ".resumed.partial" / "journal"
    command = [sys.executable, "-m", "runtime", "embed", str(images), "--model", str(model), "--ray", address,
               "--out", str(out), "--batch-size", "2", "--max-megapixels", MEGAPIXELS]
    driver = subprocess.Popen(command, cwd=ROOT, env=cluster.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.002)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not out.exists() and journal.exists(), "the run was to be killed half-way"
    kept = sum(len(json.loads(line)["images"]) for line in journal.read_text().splitlines())
    assert 0 < kept < 450
    resumed = runtime_cli(cluster.env, "embed", images, "--model", model, "--ray", address, "--out", out,
                          "--max-megapixels", MEGAPIXELS)
    assert resumed.returncode == 1, resumed.stderr
    assert f"wrote {out}: 450 images, {kept} of them from an earlier run, 2 failed" in resumed.stdout
    paths = pq.read_table(out / "part-00000.parquet").column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 452  # every image once
    assert_same_rows(read(out), on_one_machine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resumed"]


def test_a_cluster_that_does_not_answer_is_one_line(digits, tmp_path):
    model, images = digits
    port = free_port()  # nothing listens there
    result = subprocess.run([sys.executable, "-m", "runtime", "embed", images, "--model", model, "--ray",
                             f"127.0.0.1:{port}", "--out", tmp_path / "out"], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: Ray cluster 127.0.0.1:{port}: does not answer (Connection refused)\n"
    assert list(tmp_path.iterdir()) == []


def test_a_folder_of_something_else_is_left_alone(digits, tmp_path):
    model, images = digits
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"a user's file")
    result = subprocess.run([sys.executable, "-m", "runtime", "embed", images, "--model", model, "--ray", "--out",
                             out], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: {out}: exists and is not a folder that python -m runtime embed --ray wrote (it " \
        "has no .hiera-manifest.json); choose another folder, or empty this one\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["holiday.jpg", "photos"]


def test_the_callable_class_on_bytes_gives_the_rows_of_the_files(digits):
    """`Embedder` as a pipeline of one's own calls it, on `read_binary_files`' columns: the rows `extract` gives,
    undecodable and oversized images as error rows, no exception."""
    model, images = digits
    files = [images / "3" / name for name in sorted(os.listdir(images / "3"))[:3]]
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
