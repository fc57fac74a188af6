"""`verify`: check an export again later, as users' CI does: the same checks the export made.

Without weights: the report is the one the export wrote (its integrity digest), it certifies what it
says (its verdict follows from its own figures and today's thresholds), every file it describes has the
recorded size and sha256, each artifact's metadata decodes and agrees with the report, and the folder
holds no file of the export that the report does not describe. With weights: they must be the weights
the export recorded (sha256, or the seed of random weights), and each artifact is run again against
PyTorch on the same validation inputs, held to the same bounds (SAM 2's mask decoder on the same images and
prompts, with its mask-IoU rows; in a segmenter family the encoder artifacts' mask-IoU rows too).

    result = export.verify(["artifacts/hiera_base_classify.onnx"], weights="random")
    assert result.ok, result.failures
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from runtime import commit, files
from runtime.artifact import EDGE_METADATA, from_metadata, read_metadata, read_sidecar
from runtime.errors import HieraRuntimeError
from runtime.tensorrt import ENGINE_SUFFIXES

from . import artifact, mask_decoder, parity, transaction
from .errors import ExportError

EDGE_SUFFIXES = (*EDGE_METADATA, ".mlpackage")  # LiteRT, ExecuTorch (the runtime reads them), Core ML (docs/edge.md)
FOLDER_SUFFIXES = (".mlpackage",)  # artifacts that are folders


@dataclass(frozen=True)
class Check:
    subject: str  # the file checked, or the export's report
    name: str  # what was checked: report, sha256, metadata, files, weights, parity
    ok: bool
    detail: str


@dataclass
class VerifyResult:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(check) for check in self.checks]}

    def add(self, subject, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(str(subject), name, bool(ok), detail))
        return ok


def verify(paths, weights: str | None = None, *, allow_unverified: bool = False,
           progress=lambda step, message: None) -> VerifyResult:
    """Check exported files (artifacts, engines, or a report: then every file it describes). `weights`
    re-runs parity against PyTorch: a checkpoint path, or "random" for an export of random weights.
    Raises `ExportError` for input that is not an export's file; a check that fails is in the result."""
    result = VerifyResult()
    targets: dict[Path, list[str]] = {}  # report -> the files to check against it
    for path in map(Path, paths):
        try:  # a Core ML package is a folder
            files.require_directory(path) if path.suffix in FOLDER_SUFFIXES else files.require_file(path)
        except HieraRuntimeError as error:
            raise ExportError(str(error)) from None
        if path.name.endswith(".report.json"):
            targets.setdefault(path, [])
            continue
        if path.suffix not in (".onnx", *ENGINE_SUFFIXES, *EDGE_SUFFIXES):
            raise ExportError(f"{path}: not an exported artifact (.onnx, a TensorRT engine, .pte, .mlpackage) nor a "
                              "report")
        targets.setdefault(path.with_name(artifact.report_name(artifact.family_of(path))), []).append(path.name)
    for report_file, names in targets.items():
        progress("verify", str(report_file))
        _verify_export(result, report_file, names, weights, allow_unverified, progress)
    return result


def _verify_export(result: VerifyResult, report_file: Path, names: list[str], weights, allow_unverified,
                   progress) -> None:
    if not report_file.is_file():
        result.add(report_file, "report", False, "missing: nothing certifies the files of this export")
        return
    report = artifact.read_report(report_file)
    if not result.add(report_file, "report", artifact.is_sealed(report),
                      "written by the export" if artifact.is_sealed(report) else
                      "edited after the export (its integrity digest does not match its content)"):
        return
    described = report.get("files", {})
    names = names or list(described)
    folder, stem = report_file.parent, artifact.family_of(report_file)
    if not report.get("report_version") == artifact.REPORT_VERSION or not isinstance(described, dict):
        raise ExportError(f"{report_file}: a report of another version ({report.get('report_version')!r}); verify it "
                          "with the hiera-deploy that wrote it")
    _verdict(result, report_file, report)
    names = [name for name in names if _inside(result, folder, name)]  # one that leaves is never read
    for name in names:
        entry = described.get(name)
        if not result.add(folder / name, "files", entry is not None,
                          "described by the report" if entry else "not described by the report"):
            continue
        _sha256(result, folder / name, entry)
        if not artifact.in_family(name, stem):  # a file the Hub layout serves: its bytes are what it certifies
            continue
        if name.endswith(".onnx") and artifact.data_file(folder / name).name in described:
            _sha256(result, artifact.data_file(folder / name), described[artifact.data_file(folder / name).name])
        sidecar = artifact.sidecar_of(folder / name)
        if Path(name).suffix in EDGE_SUFFIXES and sidecar.name in described and sidecar.name not in names:
            _sha256(result, sidecar, described[sidecar.name])
        if name.endswith(".onnx") or Path(name).suffix in EDGE_SUFFIXES:
            _metadata(result, folder / name, report)
    strays = sorted(p.name for p in folder.iterdir() if artifact.in_family(p.name, stem)
                    and p.name not in described and p != report_file)
    result.add(folder, "files", not strays, "no file of this export beside the report that it does not describe"
               if not strays else f"files of this export the report does not describe: {', '.join(strays)}")
    # What the export wrote is in its kept manifest: a file there that the report has no sha256 for (the Hub files
    # of an export made before reports described them) would be served unchecked.
    unrecorded = sorted((commit.read_kept(folder / transaction.kept_manifest(stem)) or set())
                        - set(described) - {report_file.name})
    result.add(folder, "files", not unrecorded, "every file this export wrote has its sha256 in the report"
               if not unrecorded else f"files this export wrote that its report records no sha256 of, so nothing "
               f"can check them: {', '.join(unrecorded)} (export again to have them described)")
    waiting = transaction.pending(folder)
    if waiting:
        result.add(folder, "files", False, f"an interrupted commit is pending in {waiting[0].name}: the next export "
                                           "into this folder completes it")
    if weights is not None:  # the artifacts; the Hub's copies of them are held to their sha256 above
        ours = [name for name in names if artifact.in_family(name, stem)]
        if report.get("task") == mask_decoder.TASK:  # its parity runs on encoder outputs and prompts
            _decoder_parity(result, folder, ours, report, report, weights, allow_unverified, progress)
            return
        second = {e.get("file") for e in report.get("artifacts", {}).values() if "task" in e}  # a family's decoder
        _parity(result, folder, [name for name in ours if name not in second], report, weights, allow_unverified,
                progress)
        if second:
            _decoder_parity(result, folder, ours, report, report.get("decoder") or {}, weights, allow_unverified,
                            progress)


def _inside(result: VerifyResult, folder: Path, name) -> bool:
    """Whether `name`, from a report's file list or a command line, is a file of the export folder: relative,
    without `..`, and not leaving it through a symlink. One that leaves is a failed check; it is never opened."""
    inside = commit.is_relative_name(name)
    if inside:
        try:
            inside = (folder / name).resolve().is_relative_to(folder.resolve())
        except (OSError, RuntimeError):  # a symlink loop
            inside = False
    if not inside:
        result.add(name, "files", False, f"leaves the export folder {folder} (an absolute path, '..' or a "
                   "symlink out): not read, and not a file of this export")
    return inside


def _verdict(result: VerifyResult, report_file: Path, report: dict) -> None:
    """The report's verdict follows from its own figures, under today's bounds."""
    if report.get("passed") is not True:
        why = "; ".join(f for entry in report.get("artifacts", {}).values() for f in entry.get("failures", []))
        result.add(report_file, "report", False, "the export's parity check did not pass" + (f": {why}" if why else
                                                 " (it was not run)" if report.get("passed") is None else ""))
        return
    for key, entry in report.get("artifacts", {}).items():
        precision = entry.get("precision", key)  # a family's second model keys its rows `decoder-<precision>`
        if entry.get("skipped") and entry.get("passed") is None:  # not run here (Core ML): nothing to recompute
            result.add(report_file, "report", True, f"{key}: {entry['skipped']}")
            continue
        recomputed = parity.failures(precision, entry.get("parity") or {}) if precision in parity.THRESHOLDS else \
            ["an unknown precision"]
        recomputed += _mask_iou_failures(precision, entry.get("mask_iou"))
        result.add(report_file, "report", not recomputed, f"{key}: its figures are within today's bounds"
                   if not recomputed else f"{key}: its figures fail today's bounds: {'; '.join(recomputed)}")


def _mask_iou_failures(precision: str, row) -> list[str]:
    """An encoder artifact's mask-IoU row (`--task segmenter`) under today's bound; none where there is no row."""
    if row is None:
        return []
    bound = parity.ENCODER_MASK_IOU_BOUNDS.get(computes_or_none(precision))
    if bound is None:
        return ["masks through the fp32 decoder: an unknown precision"]
    return mask_decoder.mask_row_failures(row, bound, "masks through the fp32 decoder:")


def computes_or_none(precision: str) -> str | None:
    return artifact.computes(precision) if precision in parity.THRESHOLDS else None


def _sha256(result: VerifyResult, path: Path, entry: dict) -> None:
    try:
        digest = files.sha256_folder(path) if path.suffix in FOLDER_SUFFIXES else files.sha256(path)
    except HieraRuntimeError as error:
        result.add(path, "sha256", False, str(error))
        return
    result.add(path, "sha256", digest == entry.get("sha256"), "as recorded" if digest == entry.get("sha256")
               else f"{digest} differs from the recorded {entry.get('sha256')}: the file changed after the export")


def _metadata(result: VerifyResult, path: Path, report: dict) -> None:
    try:
        info = from_metadata(_props(path), path)
    except (ExportError, HieraRuntimeError) as error:
        result.add(path, "metadata", False, str(error))
        return
    key, entry = next(((k, e) for k, e in report.get("artifacts", {}).items() if e.get("file") == path.name),
                      (None, {}))
    expected = entry.get("precision", key)  # a family's second model states its precision, task and weights
    problems = [f"{what} {got!r}, the report says {want!r}" for what, got, want in (
        ("precision", info.precision, computes_or_none(expected or "")),
        ("variant", info.variant, report.get("variant")),
        ("task", info.task, entry.get("task", report.get("task"))),
        ("weights", info.weights, entry.get("weights", report.get("weights"))))
        if got != want]
    result.add(path, "metadata", not problems, "valid, and as the report says" if not problems else
               "; ".join(problems))


def _parity(result: VerifyResult, folder: Path, names: list[str], report: dict, weights: str, allow_unverified,
            progress) -> None:
    """Run the artifacts again against PyTorch on the weights given, which must be the ones recorded."""
    from .weights import load_weights  # torch: only when weights are given

    recorded = report.get("weights") or {}
    source = str(recorded.get("source", ""))
    task, seed = report.get("task"), (report.get("validation") or {}).get("seed")
    if seed is None:
        result.add(folder, "parity", False, "the export did not validate its artifacts: nothing to run again")
        return
    random_seed = int(source.removeprefix("random:")) if source.startswith("random:") else None
    if (weights == "random") != (random_seed is not None):
        result.add(weights, "weights", False, f"not the weights of this export: it was made from {source}")
        return
    runnable = (".onnx", *ENGINE_SUFFIXES, *EDGE_METADATA)  # what the runtime runs here (not a Core ML package)
    onnx_files = [folder / n for n in names if Path(n).suffix in runnable]
    if not onnx_files:
        return
    info = _info(onnx_files[0])
    progress("weights", f"loading {weights}")
    model, _, _ = load_weights(weights, report.get("variant") if weights == "random" else None, task,
                               random_seed if random_seed is not None else 0, allow_unverified,
                               out_features=info.outputs if task == "backbone" else None,
                               with_loss="loss" in info.outputs, input_size=info.input_size[-2:])
    same = (model.provenance.get("source") == source if weights == "random" else
            model.provenance.get("sha256") == recorded.get("sha256"))
    if not result.add(weights, "weights", same, "the weights the export recorded" if same else
                      f"not the weights of this export (it recorded {source}, sha256 {recorded.get('sha256')}; "
                      f"these are {model.provenance.get('source')}, sha256 {model.provenance.get('sha256')})"):
        return
    inputs, _ = parity.validation_inputs(model, info.preprocessing, seed)
    progress("reference", "PyTorch fp32")
    reference = parity.run_torch(model, inputs)
    del model
    for path in onnx_files:
        precision = next((p for p, e in report.get("artifacts", {}).items() if e.get("file") == path.name), "fp16")
        progress("validate", path.name)
        try:
            got = parity.run_artifact(path, inputs)
        except HieraRuntimeError as error:
            result.add(path, "parity", False, str(error))
            continue
        failed = parity.failures(precision, parity.compare(reference, got))
        result.add(path, "parity", not failed, f"within the {precision} bounds against PyTorch" if not failed else
                   "; ".join(failed))


def _decoder_parity(result: VerifyResult, folder: Path, names: list[str], report: dict, section: dict, weights: str,
                    allow_unverified, progress) -> None:
    """SAM 2's mask decoder run again as its export validated it (`mask_decoder.prepare`: the checkpoint's encoder in
    PyTorch on the recorded validation images, the decoder on the validation prompts), each decoder artifact of
    `names` held to its precision's bounds and mask-IoU row; in a family (`--task segmenter`) each encoder artifact's
    mask-IoU row through the fp32 decoder too. `section`: where the decoder's weights and validation are recorded
    (the report, or a family's `decoder` part)."""
    from . import segmenter
    from .options import Options

    recorded, inputs = section.get("weights") or {}, (section.get("validation") or {}).get("inputs") or []
    # the noise images are named random:<seed>:<index>; the photographs by their names
    seeds = {name.split(":")[1] for name in inputs if name.startswith("random:") and name.count(":") == 2}
    if len(seeds) != 1 or not next(iter(seeds)).isdigit():
        result.add(folder, "parity", False, "the export recorded no decoder validation inputs: nothing to run again")
        return
    if weights == "random":  # a decoder is exported from a checkpoint only
        result.add(weights, "weights", False, f"not the weights of this export: it was made from "
                                              f"{recorded.get('source')}")
        return
    prepared = mask_decoder.prepare(Options(weights=weights, task=mask_decoder.TASK, seed=int(next(iter(seeds))),
                                            allow_unverified=allow_unverified), progress)
    got = prepared.report["weights"]
    if not result.add(weights, "weights", got.get("sha256") == recorded.get("sha256"), "the weights the export "
                      "recorded (the mask decoder's)" if got.get("sha256") == recorded.get("sha256") else
                      f"not the weights of this export's mask decoder (it recorded {recorded.get('source')}, sha256 "
                      f"{recorded.get('sha256')}; these are {got.get('source')}, sha256 {got.get('sha256')})"):
        return
    if prepared.report["validation"]["inputs"] != inputs:
        result.add(folder, "parity", False, f"the decoder's validation inputs are now "
                   f"{prepared.report['validation']['inputs']}, the export's were {inputs}: not comparable")
        return
    entries = {e.get("file"): (key, e) for key, e in report.get("artifacts", {}).items()}
    for name in names:
        key, entry = entries.get(name, (None, {}))
        path = folder / name
        if key is None or Path(name).suffix != ".onnx":
            continue
        precision = entry.get("precision", key)
        if entry.get("task", report.get("task")) == mask_decoder.TASK:
            progress("validate", f"{name} against PyTorch on {len(prepared.reference['masks'])} prompts")
            failed = _decoder_failures(path, prepared, precision)
            result.add(path, "parity", not failed, f"within the {precision} bounds and mask IoU against PyTorch"
                       if not failed else "; ".join(failed))
        elif entry.get("mask_iou") is not None:  # a family's encoder artifact: its masks through the fp32 decoder
            progress("validate", f"{name}: its outputs through the fp32 decoder, masks against PyTorch's")
            try:
                embeddings = parity.run_artifact(path, {"pixel_values": prepared.images})
            except HieraRuntimeError as error:
                result.add(path, "parity", False, str(error))
                continue
            row = segmenter.encoder_mask_row(prepared, embeddings, precision)
            result.add(path, "parity", not row["failures"], f"masks through the fp32 decoder: "
                       f"{mask_decoder.describe_mask_row(row)}, bound {row['bound']}" if not row["failures"] else
                       "; ".join(row["failures"]))


def _decoder_failures(path: Path, prepared, precision: str) -> list[str]:
    """A decoder artifact on the validation calls against PyTorch's answers, as its export held it: the precision's
    bounds on `masks` and `iou_scores`, and the masks' IoU (`mask_decoder.judge`)."""
    from runtime.session import OnnxSession

    try:
        session = OnnxSession(path, provider="cpu", threads=2)
        calls = [session.run(feed["image_embeddings"], **{k: v for k, v in feed.items() if k != "image_embeddings"})
                 for feed in prepared.feeds]
    except HieraRuntimeError as error:
        return [str(error)]
    got = {name: np.concatenate([call[name] for call in calls]) for name in calls[0]}
    return mask_decoder.judge(prepared.reference, got, prepared.stability, precision)[1]


def _info(path: Path):
    if path.suffix == ".onnx" or path.suffix in EDGE_SUFFIXES:
        return from_metadata(_props(path), path)
    return from_metadata(read_sidecar(path)["metadata"], path)


def _props(path: Path) -> dict[str, str]:
    """An artifact's metadata: a Core ML package's through coremltools (the runtime does not run it), another edge
    artifact's through runtime.artifact, an ONNX file's metadata_props."""
    if path.suffix in FOLDER_SUFFIXES:
        from .coreml import read_metadata as read_package  # coremltools: only for a package
        return read_package(path)
    edge = read_metadata(path)
    if edge is not None:
        return edge
    model = artifact.load_graph(path, weights=False)
    return {p.key: p.value for p in model.metadata_props}
