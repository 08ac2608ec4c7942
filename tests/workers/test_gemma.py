"""Gemma preparation: the skip-when-done logic and failure reporting with a fake converter;
the folder ``make demo`` converted, whenever it exists; the real conversion (about 70 s,
3.4 GB RAM) only when OPTENGINE_TEST_GEMMA=1."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from services.settings import load_settings
from services.workers import prepare_gemma
from services.workers.gemma import is_prepared

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
DEMO_GEMMA = load_settings().data_dir / "models" / "gemma-3-270m"  # where make demo writes it


def _fake_python(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return script


_FAKE_CONVERTER = """
    import json, pathlib, sys
    converter, out = sys.argv[1], pathlib.Path(sys.argv[2])
    assert converter.endswith("_convert_gemma.py")
    runs = out.parent / "runs"
    runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"")
    (out / ".optengine-gemma.json").write_text(json.dumps({"version": "1"}))
    print(json.dumps({"seconds": 0.1}))
"""


def test_converts_once(tmp_path: Path) -> None:
    out = tmp_path / "models" / "gemma-3-270m"
    python = _fake_python(tmp_path, _FAKE_CONVERTER)
    assert not is_prepared(out)
    assert prepare_gemma(out, python) == out
    assert is_prepared(out)
    assert prepare_gemma(out, python) == out
    assert (out.parent / "runs").read_text() == "x"  # the second call did not convert


def test_stale_stamp_is_not_prepared(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / ".optengine-gemma.json").write_text(json.dumps({"version": "0"}))
    assert not is_prepared(tmp_path)


def test_failure_reports_the_log(tmp_path: Path) -> None:
    failing = """
        import sys
        print("RuntimeError: saved tokenizer does not prepend exactly one <bos>", file=sys.stderr)
        sys.exit(1)
    """
    out = tmp_path / "gemma"
    with pytest.raises(RuntimeError, match="prepend exactly one <bos>"):
        prepare_gemma(out, _fake_python(tmp_path, failing))
    assert not out.exists()
    assert (tmp_path / "gemma.convert.log").is_file()


def test_missing_interpreter(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="setup_vllm_venv"):
        prepare_gemma(tmp_path / "gemma", tmp_path / "no" / "python")


def assert_servable_gemma(out: Path) -> None:
    """What vLLM needs from a converted Gemma 3 folder, and the GGUF's pitfalls mended."""
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert "quantization_config" not in config
    assert json.loads((out / "tokenizer_config.json").read_text())["add_bos_token"] is True
    assert 106 in json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = tokenizer.encode("The capital of France is").ids
    assert ids[0] == tokenizer.token_to_id("<bos>") == 2
    assert tokenizer.id_to_token(106) == "<end_of_turn>"
    assert "<start_of_turn>model" in (out / "chat_template.jinja").read_text()


@pytest.mark.skipif(
    os.environ.get("OPTENGINE_TEST_GEMMA") != "1" or not VLLM_PYTHON.exists(),
    reason="real Gemma conversion is slow: set OPTENGINE_TEST_GEMMA=1 (needs .venv-vllm)",
)
def test_real_conversion(tmp_path: Path) -> None:
    assert_servable_gemma(prepare_gemma(tmp_path / "gemma-3-270m", VLLM_PYTHON))


@pytest.mark.skipif(not is_prepared(DEMO_GEMMA),
                    reason=f"no converted Gemma in {DEMO_GEMMA} (make demo writes it)")
def test_the_model_make_demo_serves() -> None:
    """The folder ``make demo`` converted once and serves: checked on every run where it
    exists, without converting again."""
    assert_servable_gemma(DEMO_GEMMA)
