"""``bundle_root`` of a bundle config resolves only that bundle, wherever the bundle lies and is run from.

Every ``configs/*.json`` sets ``bundle_root`` with ``medkd3d.bundles.find_bundle_root``. A copied bundle run from
elsewhere must read and write its own folder, never the bundles next to the installed medkd3d sources, and a
config that names another bundle than the one it lies in is an error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from monai.bundle import ConfigParser, ConfigWorkflow

from medkd3d.bundles import find_bundle_root
from medkd3d.utils import exception_chain

BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"
TEACHER = "brats_teacher_vggvit3d"


def _copy(bundle: str, destination: Path) -> Path:
    return Path(shutil.copytree(BUNDLES_DIR / bundle, destination, ignore=shutil.ignore_patterns("models", "eval")))


def _workflow(bundle_dir: Path, *configs: str, workflow_type: str = "train") -> ConfigWorkflow:
    """MONAI's workflow as ``python -m monai.bundle run --config_file ...`` builds it (no ``bundle_root``), initialised."""
    files = [str(bundle_dir / "configs" / c) for c in configs]
    workflow = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0], logging_file=False, workflow_type=workflow_type
    )
    workflow.initialize()
    return workflow


def _messages(error: BaseException | None) -> str:
    """The messages of an exception and its causes (MONAI wraps errors of a ``_target_`` in a RuntimeError)."""
    return "\n".join(str(e) for e in exception_chain(error))


@pytest.mark.parametrize("start", ["repository", "elsewhere", "inside"])
def test_a_copied_bundle_resolves_itself_wherever_it_is_run_from(tmp_path: Path, monkeypatch, start: str) -> None:
    copy = _copy(TEACHER, tmp_path / "copies" / TEACHER)
    cwd = {"repository": BUNDLES_DIR.parent, "elsewhere": tmp_path, "inside": copy}[start]
    monkeypatch.chdir(cwd)
    workflow = _workflow(copy, "train.json", "profiles/quick.json")
    assert workflow.bundle_root == str(copy.resolve())
    # what it reads and writes follows: its own models/ and eval/, not those of the repository's bundle
    assert workflow.parser.get_parsed_content("ckpt_dir") == str(copy.resolve() / "models")
    assert workflow.parser.get_parsed_content("output_dir") == str(copy.resolve() / "eval")


def test_inference_config_of_a_copied_bundle_reads_its_own_checkpoint(tmp_path: Path, monkeypatch) -> None:
    copy = _copy("brats_student_effnet3d", tmp_path / "brats_student_effnet3d")
    (copy / "models").mkdir()
    (copy / "models" / "model.pt").write_bytes(b"")  # initialize checks that the bundle's own checkpoint exists
    monkeypatch.chdir(BUNDLES_DIR.parent)  # the repository's bundles/ are right there
    workflow = _workflow(copy, "inference.json", workflow_type="infer")
    assert workflow.bundle_root == str(copy.resolve())
    assert workflow.parser.get_parsed_content("ckpt_path") == str(copy.resolve() / "models" / "model.pt")


def test_monai_bundle_commands_resolve_the_bundle_of_their_config_file(tmp_path: Path, monkeypatch) -> None:
    """``ckpt_export``, ``verify_net_in_out``, ``onnx_export`` and ``trt_export`` parse ``config_file_`` with a plain
    ``ConfigParser``; a function of the same shape in a ``monai.bundle`` module stands in for them."""
    copy = _copy(TEACHER, tmp_path / TEACHER)
    monkeypatch.chdir(BUNDLES_DIR.parent)
    namespace = {"__name__": "monai.bundle.scripts", "ConfigParser": ConfigParser}
    source = (
        "def command(config_file_):\n"
        "    parser = ConfigParser()\n"
        "    parser.read_config(f=config_file_)\n"
        "    return parser.get_parsed_content('output_dir')\n"
    )
    exec(compile(source, "monai_bundle_scripts_stand_in", "exec"), namespace)
    assert namespace["command"](str(copy / "configs" / "train.json")) == str(copy.resolve() / "eval")


def test_a_config_naming_another_bundle_is_an_error(tmp_path: Path, monkeypatch) -> None:
    """A renamed copy still says ``name: brats_teacher_vggvit3d``: refusing beats reading that bundle's files."""
    renamed = _copy(TEACHER, tmp_path / "my_teacher")
    monkeypatch.chdir(BUNDLES_DIR.parent)
    workflow = _workflow(renamed, "train.json")
    with pytest.raises(Exception) as raised:
        _ = workflow.bundle_root
    assert "resolves only itself" in _messages(raised.value)
    assert f"--bundle_root {renamed.resolve()}" in _messages(raised.value)
    # the documented way out works
    workflow = ConfigWorkflow(
        config_file=str(renamed / "configs" / "train.json"),
        logging_file=False,
        workflow_type="train",
        bundle_root=str(renamed),
    )
    workflow.initialize()
    assert workflow.bundle_root == str(renamed)


def test_a_config_outside_any_bundle_is_an_error(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "loose" / "train.json"
    config.parent.mkdir()
    root = {"_target_": "medkd3d.bundles.find_bundle_root", "name": TEACHER}
    config.write_text(json.dumps({"bundle_root": root, "initialize": ["$@bundle_root"]}))
    monkeypatch.chdir(BUNDLES_DIR.parent)
    workflow = ConfigWorkflow(
        config_file=str(config),
        meta_file=str(BUNDLES_DIR / TEACHER / "configs" / "metadata.json"),  # the bundle is the metadata's
        logging_file=False,
        workflow_type=None,
    )
    assert workflow.initialize() == [str(BUNDLES_DIR / TEACHER)]
    workflow = ConfigWorkflow(config_file=str(config), logging_file=False, workflow_type=None)
    with pytest.raises(Exception) as raised:
        workflow.initialize()
    assert "are not inside a bundle" in _messages(raised.value)


def test_a_plain_config_parser_never_falls_back_to_the_installed_bundles(tmp_path: Path, monkeypatch) -> None:
    """Without MONAI's command on the stack the config's folder is unknown: only the working directory counts."""
    monkeypatch.chdir(tmp_path)
    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / TEACHER / "configs" / "train.json"))
    with pytest.raises(Exception) as raised:
        parser.get_parsed_content("bundle_root")
    assert "--bundle_root" in _messages(raised.value)
    assert str(BUNDLES_DIR.parent / "medkd3d") not in _messages(raised.value)
    monkeypatch.chdir(BUNDLES_DIR / TEACHER)  # MONAI's convention: run from inside the bundle
    parser.parse(reset=True)
    assert parser.get_parsed_content("bundle_root") == str(BUNDLES_DIR / TEACHER)
    # Python callers (pipeline, ablation, examples) still find the bundles installed with medkd3d
    monkeypatch.chdir(tmp_path)
    assert find_bundle_root(TEACHER) == str(BUNDLES_DIR / TEACHER)
