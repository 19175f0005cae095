"""Atomic writes: a failure midway leaves what was there before untouched."""

from __future__ import annotations

import pytest

from dspark_core.paths import atomic_directory, recover_directory


def test_replace_swaps_only_on_success(tmp_path):
    final = tmp_path / "ckpt"
    with atomic_directory(final) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(final, replace=True) as tmp:
            (tmp / "weights").write_text("half-written v2")
            raise RuntimeError("killed mid-write")
    assert (final / "weights").read_text() == "v1"
    with atomic_directory(final, replace=True) as tmp:
        (tmp / "weights").write_text("v2")
    assert (final / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or .old left behind


def test_without_replace_an_existing_directory_wins(tmp_path):
    final = tmp_path / "snap"
    with atomic_directory(final) as tmp:
        (tmp / "a").write_text("first")
    with atomic_directory(final) as tmp:
        (tmp / "a").write_text("second")
    assert (final / "a").read_text() == "first"


def test_recover_restores_a_swap_interrupted_between_renames(tmp_path):
    (tmp_path / "state.old").mkdir()
    (tmp_path / "state.old" / "x").write_text("last good")
    recover_directory(tmp_path / "state")
    assert (tmp_path / "state" / "x").read_text() == "last good" and not (tmp_path / "state.old").exists()
