"""Hostile checkpoints, configs and lock files, as an attacker or a broken download would make them: each is
refused at once in one line naming the file and what is wrong, without hanging, without reading more than
the file holds, and without building anything from a config that disagrees with the weights."""

import json
import math
import os
import signal
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
import safetensors.torch
import torch

import hiera_model
from hiera_model import HieraConfig, HieraModelError

from ..conftest import FAIR_FILE, FIXTURES, ROOT, fair_state

FAIR_HUB = FIXTURES / "reference" / "fair_hub"  # config.json (FAIR's arguments) + model.safetensors
SMALL = HieraConfig(embed_dim=16, num_heads=(1, 2, 4, 8), depths=(1, 2, 2, 1), input_size=(96, 128), num_classes=10)


@pytest.fixture
def no_hang():
    """Fail instead of hanging: a read that blocks (a FIFO with no writer) is interrupted after 20 s."""
    def timeout(signum, frame):
        raise TimeoutError("hung")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def refused(call, *fragments) -> str:
    with pytest.raises(HieraModelError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and len(message) < 1000, message
    for fragment in fragments:
        assert str(fragment) in message, message
    return message


def hub_copy(tmp_path) -> Path:
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    for name in ("config.json", "model.safetensors"):
        (directory / name).write_bytes((FAIR_HUB / name).read_bytes())
    return directory


# Paths that are no regular files: a FIFO or a device would hang a reader or feed it forever.

def test_a_fifo_checkpoint_fails_at_once(tmp_path, no_hang):
    fifo = tmp_path / "model.pth"
    os.mkfifo(fifo)
    refused(lambda: hiera_model.load(fifo), fifo, "a FIFO")
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    os.mkfifo(directory / "model.safetensors")
    refused(lambda: hiera_model.load(directory), directory / "model.safetensors", "a FIFO, not a regular file")


@pytest.mark.parametrize("target", ["fifo", "/dev/zero"])
def test_a_shard_that_is_a_fifo_or_a_device_fails_at_once(tmp_path, no_hang, target):
    directory = hub_copy(tmp_path)
    (directory / "model.safetensors").rename(directory / "model-00001-of-00002.safetensors")
    shard = directory / "model-00002-of-00002.safetensors"
    if target == "fifo":
        os.mkfifo(shard)
    else:
        shard.symlink_to(target)
    keys = list(safetensors.torch.load_file(directory / "model-00001-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in keys[1:]} | {keys[0]: shard.name}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    refused(lambda: hiera_model.load(directory), shard, "not a regular file")


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", ""])
def test_a_shard_outside_the_directory_is_refused(tmp_path, shard):
    directory = hub_copy(tmp_path)
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"pos_embed": shard}}))
    (directory / "model.safetensors").unlink()
    refused(lambda: hiera_model.load(directory), index, "is not a file inside the checkpoint directory")


def test_a_tensor_in_two_shards_is_refused(tmp_path):
    directory = hub_copy(tmp_path)
    state = safetensors.torch.load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    safetensors.torch.save_file(state, directory / "a.safetensors")
    safetensors.torch.save_file({"pos_embed": state["pos_embed"]}, directory / "b.safetensors")
    weight_map = {k: "a.safetensors" for k in state} | {"pos_embed": "b.safetensors"}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    refused(lambda: hiera_model.load(directory), "tensor pos_embed is also in", "a.safetensors")


@pytest.mark.parametrize("index", ["[1, 2]", '{"weight_map": {"a": 3}}', '{"weight_map": {}}', "[" * 100_000])
def test_a_broken_index_is_refused(tmp_path, index):
    directory = hub_copy(tmp_path)
    (directory / "model.safetensors").unlink()
    (directory / "model.safetensors.index.json").write_text(index)
    refused(lambda: hiera_model.load(directory), "model.safetensors.index.json: not ")


def test_an_oversized_json_file_is_refused_unread(tmp_path):
    directory = hub_copy(tmp_path)
    with open(directory / "config.json", "wb") as f:
        f.truncate(17 << 20)  # 17 MB of zeros: more than any config needs
    refused(lambda: hiera_model.load(directory), "config.json: 17,825,792 bytes, more than the")


# Files that would make the reader allocate more than they hold.

def stored_zip(path, entries: dict[str, bytes], bomb: tuple[str, int] | None = None) -> None:
    """A zip archive of `entries` stored as torch.save stores them, plus optionally one entry deflated from
    `bomb[1]` zero bytes, built block by block so that making it costs nothing. Zip64 is not needed below 4 GB."""
    local, central = bytearray(), bytearray()
    items = [(name, data, 0, len(data), zlib.crc32(data)) for name, data in entries.items()]
    if bomb:
        name, size = bomb
        block = zlib.compressobj(9, zlib.DEFLATED, -15)
        chunk = block.compress(bytes(1 << 24)) + block.flush(zlib.Z_FULL_FLUSH)  # 16 MB of zeros, self-contained
        final = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = chunk * (size >> 24) + final.flush(zlib.Z_FINISH)
        items.append((name, data, 8, size, 0))  # the CRC is never reached: the entry is refused unread
    for name, data, method, size, crc in items:
        offset = len(local)
        header = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0, crc, len(data), size, len(name), 0)
        local += b"PK\x03\x04" + header + name.encode() + data
        central += (b"PK\x01\x02" + struct.pack("<H", 20) + header + struct.pack("<HHHII", 0, 0, 0, 0, offset)
                    + name.encode())
    end = struct.pack("<HHHHIIH", 0, 0, len(items), len(items), len(central), len(local), 0)
    path.write_bytes(bytes(local + central) + b"PK\x05\x06" + end)


def torch_entries(storage_bytes: int | None = None) -> dict[str, bytes]:
    """The entries of a real torch.save archive of a small uint8 tensor; with `storage_bytes`, its pickle
    declares a storage of that size instead (the tensor is a view at its start)."""
    file = Path(os.environ.get("TMPDIR", "/tmp")) / f"hiera-entries-{os.getpid()}.pth"
    torch.save({"pos_embed": torch.zeros(3, 5, 7, dtype=torch.uint8)}, file)
    try:
        with zipfile.ZipFile(file) as archive:
            entries = {info.filename: archive.read(info) for info in archive.infolist()}
    finally:
        file.unlink()
    if storage_bytes is not None:
        pickle_name = next(name for name in entries if name.endswith("/data.pkl"))
        numel = b"K" + bytes([105])  # BININT1 105: the storage's element count, found once in this pickle
        assert entries[pickle_name].count(numel) == 1
        entries[pickle_name] = entries[pickle_name].replace(numel, b"J" + struct.pack("<i", storage_bytes))
    return entries


def test_a_compressed_pth_inflating_to_2_gb_is_refused_unread(tmp_path):
    """2 MB on disk; its pickle declares a 2 GB storage whose record deflates to 2 GB, so that torch.load
    itself would inflate it whole. Refused from the zip directory, in a process whose peak memory stays far
    below what inflating it would take."""
    inflated = 127 << 24  # 2,130,706,432 bytes: whole 16 MB blocks, under 2 ** 31
    entries = torch_entries(storage_bytes=inflated)
    data_entry = next(name for name in entries if name.endswith("/data/0"))
    del entries[data_entry]
    bomb = tmp_path / "bomb.pth"
    stored_zip(bomb, entries, bomb=(data_entry, inflated))
    assert bomb.stat().st_size < 3 << 20
    # The peak is this process's own (VmHWM): getrusage's ru_maxrss would include the parent's from before exec.
    code = ("import re, sys, hiera_model\n"
            "try:\n    hiera_model.load(sys.argv[1], variant='tiny')\n"
            "except hiera_model.HieraModelError as error:\n    print(error)\n"
            "print(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())[1])\n")
    result = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    message, peak_kb = result.stdout.splitlines()[-2:]
    assert f"entry {data_entry} is compressed" in message and "inflating to 2,130,706,432" in message, message
    assert int(peak_kb) < 1 << 20, f"peak RSS {int(peak_kb) >> 10} MB"
    print(peak_kb)  # under 1 GB: the 2 GB were never inflated


def test_a_zip_whose_entries_claim_more_than_the_file_is_refused(tmp_path):
    """Stored entries whose headers claim 1 GB each, in a file of a few kB."""
    file = tmp_path / "model.pth"
    stored_zip(file, torch_entries())
    data = bytearray(file.read_bytes())
    start = data.rindex(b"PK\x01\x02")  # the last entry's central directory record: its two sizes
    data[start + 20:start + 28] = struct.pack("<II", 1 << 30, 1 << 30)
    file.write_bytes(bytes(data))
    refused(lambda: hiera_model.load(file, variant=SMALL), file, "its entries declare 1,07", "more than the file's")


def safetensors_file(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}"), "its header declares 1,099,511,627,776 bytes"),
    (lambda p: safetensors_file(p, {"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 16]}},
                                bytes(16)), "needs 4,398,046,511,104 bytes; its offsets span 16"),
    (lambda p: safetensors_file(p, {"w": {"dtype": "F32", "shape": [1 << 28], "data_offsets": [0, 1 << 30]}},
                                bytes(16)), "its tensors declare 1,073,741,824 bytes of data; the file holds 16"),
    (lambda p: safetensors_file(p, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                    "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, bytes(24)),
     "tensor 'b' starts at byte 8 of the data, not at 16"),
    (lambda p: safetensors_file(p, {"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)),
     "tensor 'a' has no valid dtype, shape and data_offsets"),
    (lambda p: safetensors_file(p, {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)),
     "tensor 'a' has no valid dtype, shape and data_offsets"),
    (lambda p: safetensors_file(p, [1, 2]), "its header is not a JSON object"),
    (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"{{{{"), "its header is not JSON"),
    (lambda p: p.write_bytes(b"\x01\x02"), "shorter than the 8-byte header length"),
])
def test_safetensors_headers_are_checked_against_the_file_before_any_allocation(tmp_path, make, reason):
    file = tmp_path / "model.safetensors"
    make(file)
    refused(lambda: hiera_model.load(file), file, "not a valid safetensors file", reason)


# Weights that are not numbers.

@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_non_finite_weights_are_refused_naming_the_tensor_and_the_counts(tmp_path, suffix):
    state = fair_state()
    state["blocks.0.attn.qkv.weight"][0, :3] = float("nan")
    state["pos_embed"][0, 0, 0] = float("inf")
    state["pos_embed"][0, 0, 1] = -float("inf")
    file = tmp_path / f"weights{suffix}"
    safetensors.torch.save_file(state, file) if suffix == ".safetensors" else torch.save(state, file)
    refused(lambda: hiera_model.load(file, variant=SMALL), file, "non-finite weights in 2 tensors",
            "blocks.0.attn.qkv.weight (3 NaN, 0 Inf)", "pos_embed (0 NaN, 2 Inf)")


@pytest.mark.parametrize("payload, reason", [
    ({"a": torch.zeros(2, device="meta")}, "tensor a is not a plain dense tensor with data"),
    ({"a": torch.zeros(3).to_sparse()}, "tensor a is not a plain dense tensor with data"),
    ({1: torch.zeros(2)}, "holds no state dict of tensors"),
    ({"a": [1, 2]}, "holds no state dict of tensors"),
])
def test_pth_contents_that_are_no_weights(tmp_path, payload, reason):
    file = tmp_path / "model.pth"
    torch.save(payload, file)
    refused(lambda: hiera_model.load(file, variant=SMALL), file, reason)


def test_weights_of_the_wrong_rank_are_one_line(tmp_path):
    state = fair_state()
    state["pos_embed"] = torch.tensor(1.0)
    file = tmp_path / "model.safetensors"
    safetensors.torch.save_file(state, file)
    refused(lambda: hiera_model.load(file), file, "cannot read embed dim and depth from the weights")
    refused(lambda: hiera_model.load(file, variant=SMALL), file, "disagree with the weights: pos_embed is ()")


def renamed(old, new):
    state = fair_state()
    state[new] = state.pop(old)
    return state


@pytest.mark.parametrize("make_state, variant, fragment", [
    (lambda: renamed("blocks.0.norm1.weight", "blocks.999999.norm1.weight"), None,
     "weights with 1,000,000 blocks; no Hiera has more than 1024"),
    (lambda: renamed("blocks.0.norm1.weight", "blocks." + "9" * 5000 + ".norm1.weight"), SMALL,
     "missing 1: blocks.0.norm1.weight; unexpected 1: blocks.99999"),
    (lambda: {"x" * 100_000: torch.zeros(1)}, None, "not a Hiera checkpoint in a known layout"),
])
def test_hostile_tensor_names_are_one_short_line(tmp_path, make_state, variant, fragment):
    file = tmp_path / "model.safetensors"
    safetensors.torch.save_file(make_state(), file)
    refused(lambda: hiera_model.load(file, variant=variant), file, fragment)


# Configs: every value checked under the file's own name, nothing built before they agree with the weights.

@pytest.fixture
def nothing_built(monkeypatch):
    """Fail the test if a model is built (its unroll index computed)."""
    import hiera_model.model

    def built(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(hiera_model.model, "unroll_order", built)


FAIR_CONFIG = json.loads((FAIR_HUB / "config.json").read_text())


@pytest.mark.parametrize("changes, field", [
    ({"embed_dim": -16}, "embed_dim -16 must be a whole number from 1 to 4096"),
    ({"embed_dim": True}, "embed_dim True must be a whole number"),
    ({"embed_dim": 16 << 20}, "embed_dim 16777216 must be a whole number from 1 to 4096"),
    ({"mlp_ratio": float("nan")}, "mlp_ratio nan must be a finite number"),
    ({"mlp_ratio": 1e400}, "mlp_ratio inf must be a finite number"),
    ({"input_size": [65536, 65536]}, "input_size [65536, 65536] must be a list of whole numbers from 1 to 16384"),
    ({"input_size": [8192, 8192]}, "input_size (8192, 8192) makes 4,194,304 tokens"),
    ({"stages": [1, 2, -2, 1]}, "stages [1, 2, -2, 1] must be a list of whole numbers"),
    ({"stages": [1] * 20}, "must be a list of 1 to 8 whole numbers"),
    ({"mask_unit_attn": [1, 1, 0, 0]}, "mask_unit_attn [1, 1, 0, 0] must be a list of true/false values"),
    ({"q_stride": "2, 2"}, "q_stride '2, 2' must be a list"),
    ({"num_heads": 0}, "num_heads [0] must be a list of whole numbers from 1 to 1024"),
    ({"head_mul": float("-inf")}, "head_mul -inf must be a finite number above 0"),
    ({"embed_dim": 32}, "embed_dim 32, in_chans 3, patch_kernel (7, 7) disagree with the weights: "
                        "patch_embed.proj.weight is (16, 3, 7, 7)"),
    ({"input_size": [192, 256]}, "input_size (192, 256) disagree with the weights: pos_embed is (1, 768, 16), "
                                 "that config needs (1, 3072, 16)"),
    ({"stages": [1, 2, 20, 1]}, "stages (1, 2, 20, 1) make 24 blocks; the weights hold 6"),
    ({"mlp_ratio": 8.0}, "mlp_ratio 8.0 disagree with the weights: blocks.0.mlp.fc1.weight is (64, 16)"),
])
def test_hostile_config_values_name_the_file_and_the_field(tmp_path, nothing_built, changes, field):
    directory = hub_copy(tmp_path)
    config = directory / "config.json"
    config.write_text(json.dumps({**FAIR_CONFIG, **changes}))  # json writes NaN and Infinity as such
    refused(lambda: hiera_model.load(directory), config, field)


@pytest.mark.parametrize("changes, field", [
    ({"image_size": [224, -224]}, "image_size [224, -224] must be a list of whole numbers"),
    ({"num_query_pool": False}, "num_query_pool False must be a whole number"),
    ({"embed_dim_multiplier": float("nan")}, "embed_dim_multiplier nan must be a finite number"),
    ({"layer_norm_eps": 0}, "layer_norm_eps 0 must be a finite number above 0"),
    ({"id2label": {"0": 7}}, "id2label must map class numbers to names"),
    ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
])
def test_hostile_transformers_config_values(transformers_checkpoint, tmp_path, nothing_built, changes, field):
    directory, _ = transformers_checkpoint("small_q_pool")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "model.safetensors"):
        (copy / name).write_bytes((directory / name).read_bytes())
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **changes}))
    refused(lambda: hiera_model.load(copy), copy / "config.json", field)


def test_a_deeply_nested_config_is_one_line(tmp_path):
    directory = hub_copy(tmp_path)
    (directory / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(lambda: hiera_model.load(directory), "config.json: not valid JSON (nested too deeply)")


# The lock and the Hub's records are files too.

def test_a_lock_that_is_a_fifo_or_nested_too_deeply(tmp_path, monkeypatch, no_hang):
    fifo = tmp_path / "models.lock"
    os.mkfifo(fifo)
    monkeypatch.setenv("HIERA_MODELS_LOCK", str(fifo))
    refused(lambda: hiera_model.load(FAIR_FILE, variant=SMALL), fifo, "a FIFO")
    deep = tmp_path / "deep.lock"
    deep.write_text("[" * 100_000)
    monkeypatch.setenv("HIERA_MODELS_LOCK", str(deep))
    refused(lambda: hiera_model.load(FAIR_FILE, variant=SMALL), deep, "nested too deeply")
    bad = tmp_path / "bad.lock"
    bad.write_text(json.dumps({"checkpoints": [{"variant": "tiny", "task": "classify", "format": "fair",
                                                "source": "x", "file": "x.pth", "sha256": "not a hash"}]}))
    monkeypatch.setenv("HIERA_MODELS_LOCK", str(bad))
    refused(lambda: hiera_model.load(FAIR_FILE, variant=SMALL), bad, "checkpoint 0: sha256 must be 64 lowercase hex")


def test_hub_download_metadata_that_is_a_fifo(tmp_path, private_lock, no_hang):
    directory = tmp_path / "hiera-tiny-224-in1k-hf"
    hub_copy(tmp_path).rename(directory)
    metadata = directory / ".cache" / "huggingface" / "download" / "model.safetensors.metadata"
    metadata.parent.mkdir(parents=True)
    os.mkfifo(metadata)
    refused(lambda: hiera_model.load(directory, variant=SMALL), metadata, "a FIFO")


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "hiera_model", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def test_lock_commands_on_a_fifo_exit_2_at_once(tmp_path):
    fifo = tmp_path / "hiera_tiny_224.pth"
    os.mkfifo(fifo)
    for command in ("verify", "fill"):
        result = cli("lock", command, fifo)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "a FIFO, not a regular file" in result.stderr
        assert "Traceback" not in result.stderr


def test_inspect_of_a_hostile_config_exits_2_in_one_line(tmp_path):
    directory = hub_copy(tmp_path)
    (directory / "config.json").write_text(json.dumps({**FAIR_CONFIG, "embed_dim": math.inf}))
    result = cli("inspect", directory)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "embed_dim inf must be a whole number" in result.stderr
