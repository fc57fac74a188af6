from pathlib import Path

import pytest

from export import Options, hub, run

from ..conftest import ROOT
from ..runtime.conftest import exported  # noqa: F401  (a fixture shared with the runtime tests)

DIGITS = ROOT / "models" / "digits"


@pytest.fixture(scope="session")
def digits_export(tmp_path_factory) -> tuple[dict, Path]:
    """The trained digits model exported in fp32, fp16 and int8, validated: `(artifacts by precision, report)`."""
    out = tmp_path_factory.mktemp("digits-export")
    report = run(Options(weights=str(DIGITS), out_dir=out))
    return {precision: out / entry["file"] for precision, entry in report["artifacts"].items()}, \
        Path(report["report_file"])


@pytest.fixture(scope="session")
def digits_hub(digits_export, tmp_path_factory) -> Path:
    """The digits export's Hub folder."""
    artifacts, report = digits_export
    return hub.publish(hub.layout(artifacts, report, DIGITS), tmp_path_factory.mktemp("hub") / "hiera-digits")


@pytest.fixture(scope="session")
def features_hub(exported, tmp_path_factory):  # noqa: F811  (the fixture imported above)
    """`(folder, transformers directory, transformers HieraModel)`: a small feature extractor's Hub folder."""
    artifact, directory, model = exported("small_q_pool", "features")
    folder = hub.publish(hub.layout({"fp32": artifact}, hub.report_for(artifact), directory),
                         tmp_path_factory.mktemp("hub") / "hiera-features")
    return folder, directory, model
