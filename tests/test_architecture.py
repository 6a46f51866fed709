"""Architectures from config.json files and presets (numpy only; no transformers needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scaleprobe.models.architecture import (
    FAMILIES,
    PRESETS,
    architecture_from_config,
    load_architecture,
)
from scaleprobe.models.errors import InputError


def write_config(directory: Path, document: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(document))
    return directory


def test_presets_load_by_name_case_insensitively() -> None:
    assert load_architecture("BERT-base") is PRESETS["bert-base"]
    bert = PRESETS["bert-base"]
    assert (bert.num_layers, bert.hidden_size, bert.num_heads, bert.intermediate_size) == (
        12,
        768,
        12,
        3072,
    )
    assert PRESETS["distilbert-base"].num_layers == 6
    assert not PRESETS["distilbert-base"].has_pooler


def test_directory_with_distilbert_keys(tmp_path: Path) -> None:
    config = {
        "model_type": "distilbert",
        "dim": 64,
        "n_layers": 2,
        "n_heads": 4,
        "hidden_dim": 96,
        "vocab_size": 100,
        "max_position_embeddings": 64,
    }
    arch = load_architecture(str(write_config(tmp_path / "tiny", config)))
    assert (
        arch.name,
        arch.hidden_size,
        arch.num_layers,
        arch.num_heads,
        arch.intermediate_size,
    ) == ("tiny", 64, 2, 4, 96)
    assert arch.head_size == 16


def test_albert_shares_layers_and_factorises_embeddings() -> None:
    albert = PRESETS["albert-base-v2"]
    assert albert.num_layers == 12 and albert.num_unique_layers == 1
    assert albert.embedding_size == 128
    # one shared layer: far fewer weights than BERT-base's 110M
    assert albert.parameter_count() < 15_000_000 < PRESETS["bert-base"].parameter_count()


def test_bigbird_threshold_and_padding_follow_transformers() -> None:
    bigbird = PRESETS["bigbird-roberta-base"]
    assert bigbird.sparse_threshold_tokens == (5 + 2 * 3) * 64 == 704
    assert not bigbird.uses_block_sparse(704)
    assert bigbird.uses_block_sparse(705)
    assert bigbird.padded_seq_len(705) == 768  # padded to a block multiple
    assert bigbird.padded_seq_len(700) == 700  # full attention: no padding
    full = architecture_from_config(
        {**bigbird.to_config(), "attention_type": "original_full"}, name="full"
    )
    assert not full.uses_block_sparse(4096)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_to_config_round_trips(name: str) -> None:
    arch = PRESETS[name]
    again = architecture_from_config(arch.to_config(), name=name)
    assert again == arch


def test_unknown_name_lists_presets() -> None:
    with pytest.raises(InputError, match=r"unknown model 'gpt-9'.*bert-base"):
        load_architecture("gpt-9")


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no config\.json"):
        load_architecture(str(tmp_path))


def test_malformed_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_architecture(str(tmp_path))


def test_unsupported_family_is_named_with_the_supported_list(tmp_path: Path) -> None:
    write_config(tmp_path, {"model_type": "gpt2", "n_layer": 2})
    with pytest.raises(InputError, match="unsupported architecture 'gpt2'") as error:
        load_architecture(str(tmp_path))
    assert all(family in str(error.value) for family in FAMILIES)


def test_missing_and_bad_keys(tmp_path: Path) -> None:
    write_config(tmp_path / "a", {"model_type": "bert", "hidden_size": 64})
    with pytest.raises(InputError, match="missing key 'num_hidden_layers'"):
        load_architecture(str(tmp_path / "a"))
    base = PRESETS["bert-base"].to_config()
    write_config(tmp_path / "b", {**base, "num_attention_heads": 5})
    with pytest.raises(InputError, match="not a multiple of 5 attention heads"):
        load_architecture(str(tmp_path / "b"))
    write_config(tmp_path / "c", {**base, "num_hidden_layers": -1})
    with pytest.raises(InputError, match="layers must be a positive integer"):
        load_architecture(str(tmp_path / "c"))
    write_config(tmp_path / "d", {**base, "hidden_act": "swiglu_xyz"})
    with pytest.raises(InputError, match="unsupported activation 'swiglu_xyz'"):
        load_architecture(str(tmp_path / "d"))
    write_config(tmp_path / "e", [1, 2])
    with pytest.raises(InputError, match="expected a JSON object"):
        load_architecture(str(tmp_path / "e"))
    write_config(tmp_path / "f", {"architectures": ["BertModel"]})
    with pytest.raises(InputError, match="no model_type"):
        load_architecture(str(tmp_path / "f"))
