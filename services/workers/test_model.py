"""A tiny, randomly initialised Llama model that vLLM serves, written without torch.

Nothing can be downloaded from a model hub here, and the app venv has neither torch nor
transformers, so the model is built from parts the app does have: a byte-level BPE
tokenizer trained with ``tokenizers`` on the Python standard library's own source (local,
offline, the same on every run of one interpreter), and weights drawn with numpy and
saved with ``safetensors`` under the exact Hugging Face Llama parameter names, so vLLM's
``LlamaForCausalLM`` loader takes the folder as it would a real checkpoint.

Its output is gibberish, but token counting, the chat template, batching, streaming and
the OpenAI API are real; with ``ignore_eos: true`` a request yields exactly
``max_tokens`` tokens, which is what tests and benchmarks need. Building it takes a few
seconds; a finished folder is reused (see ``MODEL_VERSION``).
"""

from __future__ import annotations

import json
import logging
import shutil
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

__all__ = ["MODEL_VERSION", "TinyLlamaSpec", "make_test_model"]

logger = logging.getLogger(__name__)

# Bump when anything below changes what is written, so stale folders are rebuilt.
MODEL_VERSION = "1"
_STAMP = ".optengine-test-model.json"

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
END_OF_TURN = "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, *ROLE_TOKENS, END_OF_TURN]

# Rendered by vLLM (and transformers) with Jinja. Plain string content only: vLLM detects
# that and flattens OpenAI content parts to text before rendering.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Standard-library modules whose source trains the tokenizer: English docstrings and code,
# about 2 MB. Read as files (never imported), so nothing runs and nothing is fetched.
_CORPUS_MODULES = """
    argparse.py ast.py asyncio/base_events.py asyncio/tasks.py calendar.py
    collections/__init__.py configparser.py csv.py dataclasses.py datetime.py decimal.py
    difflib.py email/message.py enum.py fractions.py functools.py gettext.py http/client.py
    http/server.py inspect.py ipaddress.py json/decoder.py json/encoder.py
    logging/__init__.py mailbox.py pathlib.py pickle.py pydoc.py random.py shutil.py
    statistics.py string.py subprocess.py tarfile.py textwrap.py threading.py typing.py
    unittest/case.py urllib/parse.py zipfile.py
""".split()


@dataclass(frozen=True)
class TinyLlamaSpec:
    """Shape of the random model. Small enough to load in seconds and decode fast on CPU."""

    vocab_size: int = 4096
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 688
    max_position_embeddings: int = 2048
    seed: int = 0
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def make_test_model(out_dir: Path, *, spec: TinyLlamaSpec | None = None) -> Path:
    """Write the tiny model to ``out_dir`` (tokenizer, configs, weights) and return it.

    Deterministic for a given interpreter: the same spec gives byte-identical files. A
    folder already holding a complete model of the same version and spec is returned as
    is, so a session fixture can call this freely. The files are written to a temporary
    sibling folder and renamed into place, so a reader never sees a half-written model.
    """
    spec = spec or TinyLlamaSpec()
    out_dir = Path(out_dir)
    stamp = {"version": MODEL_VERSION, "spec": asdict(spec)}
    if _is_complete(out_dir, stamp):
        logger.debug("test model at %s is up to date", out_dir)
        return out_dir

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model is not a secret
    try:
        tokenizer = _train_tokenizer(spec.vocab_size)
        _write_tokenizer(tmp, tokenizer, spec.max_position_embeddings)
        ids = {tok: tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS}
        vocab_size = tokenizer.get_vocab_size()
        _write_json(tmp / "config.json", _llama_config(spec, vocab_size, ids))
        _write_json(tmp / "generation_config.json", _generation_config(ids))
        save_file(
            dict(_random_weights(spec, vocab_size)),
            tmp / "model.safetensors",
            metadata={"format": "pt"},
        )
        (tmp / "model.safetensors").chmod(0o644)
        _write_json(tmp / _STAMP, stamp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        try:
            tmp.rename(out_dir)
        except OSError:
            # Another process finished first; its model is the same one.
            if not _is_complete(out_dir, stamp):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote tiny test model (vocab %d) to %s", vocab_size, out_dir)
    return out_dir


def _is_complete(out_dir: Path, stamp: dict[str, object]) -> bool:
    try:
        return json.loads((out_dir / _STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False


def _corpus() -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found = 0
    for name in _CORPUS_MODULES:
        path = stdlib / name
        if path.is_file():
            found += 1
            yield path.read_text(encoding="utf-8", errors="replace")
    if found < len(_CORPUS_MODULES) // 2:
        raise RuntimeError(f"standard library sources not found under {stdlib}")


def _train_tokenizer(vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 style): any text encodes, no unknowns, exact round trips."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    # Prepend <s> like Llama does; the chat template writes it itself, and vLLM renders
    # chat prompts without special tokens, so chat prompts get exactly one.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def _write_tokenizer(out_dir: Path, tokenizer: Tokenizer, max_length: int) -> None:
    tokenizer.save(str(out_dir / "tokenizer.json"))
    added = {
        str(tokenizer.token_to_id(tok)): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for tok in SPECIAL_TOKENS
    }
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            # The generic fast class loads tokenizer.json exactly as written; LlamaTokenizer
            # would rebuild a SentencePiece-style pipeline around our byte-level BPE.
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "unk_token": UNK,
            "pad_token": PAD,
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": max_length,
            "added_tokens_decoder": added,
            "chat_template": CHAT_TEMPLATE,
        },
    )


def _llama_config(spec: TinyLlamaSpec, vocab_size: int, ids: dict[str, int]) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_attention_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "initializer_range": spec.init_std,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
        "torch_dtype": "float32",
    }


def _generation_config(ids: dict[str, int]) -> dict:
    # End of turn stops generation too, as in real chat models.
    return {
        "bos_token_id": ids[BOS],
        "eos_token_id": [ids[EOS], ids[END_OF_TURN]],
        "pad_token_id": ids[PAD],
    }


def _random_weights(spec: TinyLlamaSpec, vocab_size: int) -> Iterator[tuple[str, np.ndarray]]:
    """Normal(0, std) matrices and unit norms, in a fixed order from one seeded generator."""
    rng = np.random.default_rng(spec.seed)
    h, inter = spec.hidden_size, spec.intermediate_size

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * spec.init_std).astype(np.float32)

    def ones() -> np.ndarray:
        return np.ones(h, dtype=np.float32)

    yield "model.embed_tokens.weight", normal(vocab_size, h)
    for n in range(spec.num_hidden_layers):
        prefix = f"model.layers.{n}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield f"{prefix}.self_attn.{proj}.weight", normal(h, h)
        yield f"{prefix}.mlp.gate_proj.weight", normal(inter, h)
        yield f"{prefix}.mlp.up_proj.weight", normal(inter, h)
        yield f"{prefix}.mlp.down_proj.weight", normal(h, inter)
        yield f"{prefix}.input_layernorm.weight", ones()
        yield f"{prefix}.post_attention_layernorm.weight", ones()
    yield "model.norm.weight", ones()
    yield "lm_head.weight", normal(vocab_size, h)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
