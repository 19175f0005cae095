"""The Dagster code location: definitions load, and the base_model asset materializes for a registered model."""

from __future__ import annotations

import dagster as dg
import pytest

from conftest import TINY, run_cli
from dspark_core.errors import ModelSpecError
from dspark_core.models.registry import prompt_source_for, register_model, registered_models, spec_for


def test_definitions_load_with_the_asset_graph():
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    assert dg.AssetKey("base_model") in graph.get_all_asset_keys()


def test_register_is_idempotent_and_validates(capsys, tmp_path, monkeypatch):
    slug = register_model(TINY)
    assert register_model(TINY) == slug == "tiny-smollm2-135m"
    assert spec_for(slug) == TINY and slug in registered_models()
    with pytest.raises(ModelSpecError, match="unknown model spec"):
        register_model("no-such-model")
    with pytest.raises(ModelSpecError, match="dspark models register SPEC"):
        spec_for("never-registered")
    code, out, _ = run_cli(["models", "register", TINY], capsys)
    assert code == 0 and "tiny-smollm2-135m" in out
    # a prompt source can be attached (and replaced) later; registering again without one keeps it
    prompts = tmp_path / "a.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    monkeypatch.chdir(tmp_path)
    code, _, _ = run_cli(["models", "register", TINY, "--prompts", "a.jsonl"], capsys)
    register_model(TINY)
    assert code == 0 and prompt_source_for(slug) == str(prompts)  # stored absolute
    register_model(TINY, prompts="hf:some/dataset")
    assert prompt_source_for(slug) == "hf:some/dataset"
    with pytest.raises(ModelSpecError, match="is not a file"):
        register_model(TINY, prompts="missing.jsonl")


def test_base_model_materializes_for_a_registered_partition(tmp_path, tiny_target):
    from assets.base_model import base_model

    slug = register_model(TINY)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.add_dynamic_partitions("base_model", [slug])
        result = dg.materialize([base_model], partition_key=slug, instance=instance)
        assert result.success
        metadata = result.asset_materializations_for_node("base_model")[0].metadata
        assert metadata["revision"].value == tiny_target.revision
        assert metadata["num_layers"].value == 4
        assert metadata["snapshot_path"].value == str(tiny_target.snapshot.path)
