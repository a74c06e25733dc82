"""The main job behind ``caa-lens demo``: the whole pipeline on one model, with results in one directory."""

import json
import time
from pathlib import Path

import pandas as pd
import torch

from caa_lens.data import BUNDLED_BEHAVIOURS, load_bundled
from caa_lens.methods import caa_vector
from caa_lens.models import load_model, model_identity
from caa_lens.prompts import format_prompt
from caa_lens.residuals import residual_norms
from caa_lens.vectors import package_versions, save_vector


def _answer(model, question: str, max_new_tokens: int = 24) -> str:
    prompt = format_prompt(model.tokenizer, question)
    with torch.inference_mode():
        tokens = model.generate(
            torch.tensor([prompt.token_ids]), max_new_tokens=max_new_tokens, do_sample=False, verbose=False
        )
    return model.tokenizer.decode(tokens[0, len(prompt) :], skip_special_tokens=True).strip()


def run_demo(out: Path, model_name: str, question: str, n_pairs: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = load_model(model_name)
    load_seconds = time.perf_counter() - started
    identity = model_identity(model)
    print(
        f"model {identity.name}: {identity.n_layers} layers, d_model {identity.d_model} (loaded in {load_seconds:.1f} s)"
    )

    answer = _answer(model, question)
    print(f"\nQ: {question}\nA: {answer}\n")

    prompt = format_prompt(model.tokenizer, question)
    norms = residual_norms(model, prompt)
    table = pd.DataFrame({"layer": range(identity.n_layers), "resid_post_norm": norms.numpy()})

    for behaviour in BUNDLED_BEHAVIOURS:
        data = load_bundled(behaviour)
        data = data.select(range(min(n_pairs, len(data))), f":first{n_pairs}")
        vector = caa_vector(model, data)
        save_vector(vector, out / "vectors" / f"{behaviour}.safetensors")
        table[f"{behaviour}_vector_norm"] = vector.norms().numpy()
        table[f"{behaviour}_norm_ratio"] = (vector.norms() / norms).numpy()

    table.to_csv(out / "layer_norms.csv", index=False)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    manifest = {
        "command": "caa-lens demo",
        "model": identity.name,
        "model_config_hash": identity.config_hash,
        "question": question,
        "answer": answer,
        "pairs_per_behaviour": n_pairs,
        "versions": package_versions(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"\nresults in {out.resolve()}")
    return out
