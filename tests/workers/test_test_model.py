"""The tiny random Llama: loadable tokenizer, HF-shaped config and weights, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from safetensors import safe_open
from tokenizers import Tokenizer

from services.workers import make_test_model
from services.workers.test_model import CHAT_TEMPLATE, TinyLlamaSpec

FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def _digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES}


def test_tokenizer_round_trip(model: Path) -> None:
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    assert 3000 <= tokenizer.get_vocab_size() <= 4096
    text = "def handler(request):\n    return {'ok': True}  # naïve café, 東京 🚀"
    encoding = tokenizer.encode(text)
    assert encoding.ids[0] == tokenizer.token_to_id("<s>")  # BOS prepended, like Llama
    assert tokenizer.encode(text, add_special_tokens=False).ids == encoding.ids[1:]
    assert tokenizer.decode(encoding.ids) == text  # byte-level: exact, no <unk>
    assert tokenizer.token_to_id("<unk>") not in encoding.ids
    # common words are merged into few tokens: the vocabulary was really trained
    assert len(tokenizer.encode("return self", add_special_tokens=False).ids) <= 3


def test_tokenizer_config(model: Path) -> None:
    config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    for key, token in [
        ("bos_token", "<s>"),
        ("eos_token", "</s>"),
        ("unk_token", "<unk>"),
        ("pad_token", "<pad>"),
    ]:
        assert config[key] == token
        assert tokenizer.token_to_id(token) is not None
    assert config["add_bos_token"] is True
    assert config["chat_template"] == CHAT_TEMPLATE
    assert "add_generation_prompt" in config["chat_template"]
    for role in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"):
        assert len(tokenizer.encode(role, add_special_tokens=False).ids) == 1


def test_config_and_weights(model: Path) -> None:
    spec = TinyLlamaSpec()
    config = json.loads((model / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["vocab_size"] == vocab
    assert config["hidden_size"] == 256 and config["num_hidden_layers"] == 4
    assert config["num_attention_heads"] == 4 and config["max_position_embeddings"] == 2048
    assert config["tie_word_embeddings"] is False
    assert config["eos_token_id"] == tokenizer.token_to_id("</s>")
    generation = json.loads((model / "generation_config.json").read_text())
    assert tokenizer.token_to_id("<|end|>") in generation["eos_token_id"]

    h, inter = spec.hidden_size, spec.intermediate_size
    expected = {
        "model.embed_tokens.weight": (vocab, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (vocab, h),
    }
    for n in range(spec.num_hidden_layers):
        for proj in ("q", "k", "v", "o"):
            expected[f"model.layers.{n}.self_attn.{proj}_proj.weight"] = (h, h)
        expected[f"model.layers.{n}.mlp.gate_proj.weight"] = (inter, h)
        expected[f"model.layers.{n}.mlp.up_proj.weight"] = (inter, h)
        expected[f"model.layers.{n}.mlp.down_proj.weight"] = (h, inter)
        expected[f"model.layers.{n}.input_layernorm.weight"] = (h,)
        expected[f"model.layers.{n}.post_attention_layernorm.weight"] = (h,)

    with safe_open(str(model / "model.safetensors"), framework="numpy") as weights:
        assert weights.metadata() == {"format": "pt"}
        assert set(weights.keys()) == set(expected)
        for name, shape in expected.items():
            assert weights.get_slice(name).get_shape() == list(shape), name
        embed = weights.get_tensor("model.embed_tokens.weight")
        norm = weights.get_tensor("model.norm.weight")
    assert str(embed.dtype) == config["torch_dtype"]
    assert abs(float(embed.std()) - spec.init_std) < 0.001
    assert (norm == 1).all()


def test_deterministic_and_reused(model: Path, tmp_path: Path) -> None:
    again = make_test_model(tmp_path / "tiny-llama")
    assert _digests(again) == _digests(model)

    mtime = (again / "model.safetensors").stat().st_mtime_ns
    assert make_test_model(again) == again
    assert (again / "model.safetensors").stat().st_mtime_ns == mtime  # complete: not rebuilt


def test_incomplete_folder_is_rebuilt(model: Path, tmp_path: Path) -> None:
    target = tmp_path / "tiny-llama"
    target.mkdir()
    (target / "config.json").write_text("{}")  # a crashed earlier run, say
    make_test_model(target)
    assert _digests(target) == _digests(model)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left over
