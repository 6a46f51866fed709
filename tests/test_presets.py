"""The built-in presets equal transformers' config defaults (this test imports transformers)."""

from __future__ import annotations

import pytest
import torch
from scaleprobe.models.architecture import PRESETS, architecture_from_config
from transformers import AutoConfig, AutoModel, BertConfig, BigBirdConfig, DistilBertConfig

DEFAULTS = {
    "bert-base": BertConfig,
    "distilbert-base": DistilBertConfig,
    "bigbird-roberta-base": BigBirdConfig,
}


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_preset_equals_the_transformers_defaults(name: str) -> None:
    defaults = DEFAULTS[name]().to_dict()
    read = architecture_from_config(defaults, name=name)
    assert read == PRESETS[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_config_is_accepted_by_autoconfig(name: str) -> None:
    config = AutoConfig.for_model(**PRESETS[name].to_config())
    assert config.model_type == PRESETS[name].model_type
    again = architecture_from_config(config.to_dict(), name=name)
    assert again == PRESETS[name]


TINY = {
    "bert": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 96,
        "vocab_size": 200,
    },
    "roberta": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 96,
        "vocab_size": 200,
    },
    "distilbert": {"dim": 64, "n_layers": 2, "n_heads": 4, "hidden_dim": 96, "vocab_size": 200},
    "albert": {
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "intermediate_size": 96,
        "vocab_size": 200,
        "embedding_size": 32,
    },
    "electra": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 96,
        "vocab_size": 200,
        "embedding_size": 32,
    },
    "big_bird": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 96,
        "vocab_size": 200,
        "block_size": 16,
    },
}


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_parameter_count_matches_the_built_model(model_type: str) -> None:
    config = AutoConfig.for_model(model_type, **TINY[model_type])
    arch = architecture_from_config(config.to_dict())
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    assert arch.parameter_count() == sum(p.numel() for p in model.parameters())
