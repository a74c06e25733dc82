"""Run every analysis on the default model with the CAA refusal set and write tables, JSON and figures.

    python -m analysis.run_refusal_analyses --out results/refusal_analyses --shared-data ../shared/data

Stages (``--stages`` picks a subset): ``extract`` (all layers, per-example activations, cached in
``--out``), ``similarity``, ``norms``, ``pca``, ``sweep`` (layer x multiplier effect, which picks the
steering layer unless ``--layer`` is given), ``transfer``, ``scaling``, ``ratio``, ``interference``,
``reversal``. Every stage writes CSV tables the figures can be redrawn from, and ``summary.json``
collects the headline numbers. Vectors come from the generate split; behaviour is scored on the
held-out test split (``caa/test/refusal/test_dataset_ab.json``).
"""

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from analysis import interference, letters, norms, pca, plots, reversal, scaling, similarity
from analysis._scoring import layer_scores, prefix_batches
from analysis.pipeline import claim_results_dir
from caa_lens.capability import read_text
from caa_lens.data import FIBONACCI_SIZES, ContrastiveDataset, load_behaviour_dataset
from caa_lens.extraction import ContrastiveActivations, PairActivations, extract_contrastive
from caa_lens.methods import contrastive_vector
from caa_lens.models import load_model
from caa_lens.steering import multiplier_for_ratio
from caa_lens.vectors import package_versions

STAGES = (
    "extract",
    "letters",
    "similarity",
    "norms",
    "pca",
    "sweep",
    "transfer",
    "scaling",
    "ratio",
    "interference",
    "reversal",
)
OTHER_BEHAVIOURS = ("sycophancy", "hallucination", "corrigible-neutral-HHH")


def _balanced(dataset: ContrastiveDataset, n: int, seed: int, suffix: str) -> ContrastiveDataset:
    """``n`` items, half with each matching letter: at the answer token an unbalanced set's vector is
    mostly the letter difference on this model (see ``analysis.letters``)."""
    return dataset.select(letters.balanced_indices(dataset, n, seed), suffix)


def _extraction(model, data: ContrastiveDataset, cache: Path) -> ContrastiveActivations:
    if cache.exists():
        # The cache holds only tensors, strings and lists: never unpickle code from a file in --out.
        saved = torch.load(cache, weights_only=True)
        if saved["dataset_hash"] == data.content_hash:
            examples = PairActivations(
                saved["positive"], saved["negative"], saved["pos_labels"], saved["neg_labels"]
            )
            return ContrastiveActivations(
                tuple(saved["layers"]), "resid_post", "answer", data.name, data.content_hash, len(data),
                examples.positive.sum(0), examples.negative.sum(0), examples,
            )  # fmt: skip
    acts = extract_contrastive(model, data, keep_examples=True, batch_size=8)
    assert acts.examples is not None
    torch.save(
        {
            "dataset_hash": data.content_hash, "layers": list(acts.layers),
            "positive": acts.examples.positive, "negative": acts.examples.negative,
            "pos_labels": acts.examples.positive_labels, "neg_labels": acts.examples.negative_labels,
        },
        cache,
    )  # fmt: skip
    return acts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("results/refusal_analyses"))
    parser.add_argument("--shared-data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--n-pairs", type=int, default=200)
    parser.add_argument("--eval-items", type=int, default=30, help="held-out test items scored per cell")
    parser.add_argument(
        "--layer", type=int, default=None, help="steering layer (default: picked by the sweep)"
    )
    parser.add_argument("--multiplier", type=float, default=None, help="default: --ratio at the chosen layer")
    parser.add_argument("--ratio", type=float, default=0.25, help="||m v|| / ||resid|| the sweep picks by")
    parser.add_argument("--reversal-budget", type=float, default=540.0, help="seconds")
    parser.add_argument("--reversal-items", type=int, default=20, help="search items (>= 20 for a claim)")
    parser.add_argument(
        "--reversal-multiplier", type=float, default=None, help="default: the chosen multiplier"
    )
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    stages = set(args.stages.split(","))
    out, figures = args.out, args.out / "figures"
    claim_results_dir(out)  # never writes into a directory of someone else's files
    draw = not args.no_figures
    summary_path = out / "summary.json"
    summary: dict = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    timings: dict[str, float] = summary.get("seconds", {})

    def save_summary() -> None:
        summary["seconds"] = timings
        summary_path.write_text(json.dumps(summary, indent=1, default=float))

    caa = args.shared_data / "caa"
    model = load_model(device="cpu")
    generate = load_behaviour_dataset(caa / "generate" / "refusal" / "generate_dataset.json")
    train = _balanced(generate, args.n_pairs, args.seed, f":balanced{args.n_pairs}")
    test = load_behaviour_dataset(caa / "test" / "refusal" / "test_dataset_ab.json", name="refusal_test")
    evaluation = _balanced(test, args.eval_items, args.seed, f":balanced{args.eval_items}")
    rest = test.select([i for i in range(len(test)) if test[i] not in evaluation.items], ":rest")
    search_items = _balanced(rest, args.reversal_items, args.seed, ":search")
    rest = rest.select([i for i in range(len(rest)) if rest[i] not in search_items.items], ":rest")
    heldout = _balanced(rest, 2 * min(letters.letter_counts(rest).values()), args.seed, ":heldout")
    summary.update(
        model=model.cfg.model_name,
        n_pairs=len(train),
        eval_items=len(evaluation),
        letters={
            "generate_all": letters.letter_counts(generate), "train": letters.letter_counts(train),
            "eval": letters.letter_counts(evaluation), "search": letters.letter_counts(search_items),
            "heldout": letters.letter_counts(heldout),
        },
        versions=package_versions(),
    )  # fmt: skip

    tick = time.perf_counter()
    acts = _extraction(model, train, out / "activations.pt")
    timings["extract"] = time.perf_counter() - tick
    assert acts.examples is not None
    vector = contrastive_vector(model, acts)  # letter-balanced

    def stage(name: str) -> bool:
        if name in stages:
            print(f"== {name}", flush=True)
            timings[name] = -time.perf_counter()
            return True
        return False

    def done(name: str) -> None:
        timings[name] += time.perf_counter()
        save_summary()

    if stage("letters"):
        decomposition = letters.letter_decomposition(acts)
        table = decomposition.table
        differences = scaling.pair_differences(acts).double()
        first = torch.tensor([label == "A" for label in acts.examples.positive_labels])
        letter = (differences[first].mean(0) - differences[~first].mean(0)) / 2
        behaviour = (differences[first].mean(0) + differences[~first].mean(0)) / 2
        # What a plain mean difference would be at other letter shares: b + (2 f - 1) L, exactly.
        for name, share in (("generate_all", 192 / 408), ("random_200", 88 / 200)):
            skewed = behaviour + (2 * share - 1) * letter
            table[f"cos_behaviour_if_{name}"] = torch.nn.functional.cosine_similarity(
                skewed, behaviour, dim=-1
            ).tolist()
        table.to_csv(out / "letter_decomposition.csv", index=False)
        summary["letters_decomposition"] = {
            column: table[column].round(3).tolist() for column in table.columns if column != "layer"
        }
        done("letters")

    if stage("similarity"):
        result = similarity.layer_similarity(vector)
        n = len(result.layers)
        pd.DataFrame(
            [(i, j, float(result.matrix[i, j])) for i in range(n) for j in range(n)],
            columns=["layer_i", "layer_j", "cosine"],
        ).to_csv(out / "layer_similarity.csv", index=False)
        result.by_distance.to_csv(out / "layer_similarity_by_distance.csv", index=False)
        methods = similarity.mean_vs_pca(model, acts)
        methods.table.to_csv(out / "method_similarity.csv", index=False)
        summary["similarity"] = {
            "adjacent_mean": result.mean_at([1]),
            "distance_2_to_4_mean": result.mean_at([2, 3, 4]),
            "distance_10_plus_mean": result.mean_at(range(10, n)),
            "distance_20_plus_mean": result.mean_at(range(20, n)),
            "mean_vs_pca_cosine_by_layer": methods.table.cosine.round(3).tolist(),
        }
        if draw:
            plots.plot_layer_similarity(
                result, "Refusal vectors: cosine between layers", figures / "layer_similarity.png"
            )
        done("similarity")

    if stage("norms"):
        profile = norms.norm_profile(model, vector, evaluation)
        profile.table.to_csv(out / "norm_profile.csv", index=False)
        summary["norms"] = {
            c: [round(float(x), 4) for x in profile.table[c]]
            for c in profile.table.columns
            if c.startswith("ratio")
        }
        if draw:
            plots.plot_norm_profile(profile, figures / "norm_profile.png")
        done("norms")

    if stage("pca"):
        projections = pca.pca_projections(acts.examples, acts.layers)
        rows = [
            {"layer": layer, "example": e, "pc1": float(c[e, 0]), "pc2": float(c[e, 1]),
             "side": int(projections.side[e]), "letter": projections.letters[e]}
            for layer, c in zip(projections.layers, projections.coordinates, strict=True)
            for e in range(c.shape[0])
        ]  # fmt: skip
        pd.DataFrame(rows).to_csv(out / "pca_projections.csv", index=False)
        summary["separability"] = {}
        for probe in ("logistic", "mean_difference"):
            sep = pca.separability(acts.examples, acts.layers, probe=probe, seed=args.seed)
            sep.table.to_csv(out / f"separability_{probe}.csv", index=False)
            summary["separability"][probe] = {
                "behaviour": sep.table.behaviour_accuracy.round(3).tolist(),
                "letter": sep.table.letter_accuracy.round(3).tolist(),
            }
            if draw:
                plots.plot_separability(sep, figures / f"separability_{probe}.png")
        if draw:
            plots.plot_pca_grid(projections, list(range(0, 30, 2)), save=figures / "pca_grid.png")
        done("pca")

    layer, multiplier = args.layer, args.multiplier
    if stage("sweep"):
        # Strengths as ratios of each layer's residual norm: a fixed multiplier means very different
        # things at layer 2 (||resid|| ~ 80) and layer 28 (~ 700).
        profile_path = out / "norm_profile.csv"
        if not profile_path.exists():
            norms.norm_profile(model, vector, evaluation).table.to_csv(profile_path, index=False)
        reference = pd.read_csv(profile_path).set_index("layer")["resid_all_but_first"]
        ratios = (-1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0)
        batches = prefix_batches(model, evaluation)
        rows = []
        for candidate in range(0, 30, 2):
            values = [
                multiplier_for_ratio(vector, candidate, r, float(reference[candidate])) if r else 0.0
                for r in ratios
            ]
            scores = layer_scores(model, batches, [vector], candidate, values).mean(0)[0]
            rows += [
                {"layer": candidate, "ratio": r, "multiplier": m, "p_matching": float(p)}
                for r, m, p in zip(ratios, values, scores, strict=True)
            ]
        sweep = pd.DataFrame(rows)
        sweep.to_csv(out / "layer_multiplier_sweep.csv", index=False)
        wide = sweep.pivot(index="layer", columns="ratio", values="p_matching")
        swings = {r: (wide[r] - wide[-r]).round(4).to_dict() for r in ratios if r > 0}
        if layer is None:
            layer = int((wide[args.ratio] - wide[-args.ratio]).loc[6:20].idxmax())
        if multiplier is None:
            multiplier = float(sweep[(sweep.layer == layer) & (sweep.ratio == args.ratio)].multiplier.iloc[0])
        summary["sweep"] = {
            "swing_by_ratio_and_layer": swings,
            "chosen_layer": layer,
            "chosen_multiplier": multiplier,
        }
        done("sweep")
    layer = layer if layer is not None else summary.get("sweep", {}).get("chosen_layer", 12)
    multiplier = (
        multiplier if multiplier is not None else summary.get("sweep", {}).get("chosen_multiplier", 8.0)
    )
    summary["layer"], summary["multiplier"] = layer, multiplier

    if stage("transfer"):
        chosen = list(range(0, 30, 3))
        transfer = similarity.layer_transfer(
            model, vector, _balanced(evaluation, 20, args.seed, ":20"), chosen, chosen, multiplier
        )
        pd.DataFrame(
            [
                {"read": r, "apply": a, "plus": float(transfer.plus[i, j]), "minus": float(transfer.minus[i, j]),
                 "effect": float(transfer.effect[i, j])}
                for i, r in enumerate(transfer.read_layers) for j, a in enumerate(transfer.apply_layers)
            ]
        ).to_csv(out / "layer_transfer.csv", index=False)  # fmt: skip
        summary["transfer_baseline"] = transfer.baseline
        if draw:
            plots.plot_layer_transfer(transfer, figures / "layer_transfer.png")
        done("transfer")

    if stage("scaling"):
        sizes = [n for n in FIBONACCI_SIZES if n <= len(train)]
        summary["scaling"] = {}
        # Plain means (as the papers) and letter-balanced means: each nested subset has its own
        # letter imbalance, which dominates the plain curves on this model.
        for tag, balance in (("plain", False), ("letter_balanced", True)):
            scaled = scaling.sample_size_scaling(acts, train, sizes, seed=args.seed, balance_letters=balance)
            scaled.table.to_csv(out / f"sample_size_{tag}.csv", index=False)
            vectors = scaling.subset_vectors(
                model, acts, train, sizes, seed=args.seed, balance_letters=balance
            )
            effect = scaling.steering_effect_by_size(model, vectors, evaluation, layer, multiplier)
            effect.table.to_csv(out / f"sample_size_effect_{tag}.csv", index=False)
            at_layer = scaled.table[scaled.table.layer == layer]
            summary["scaling"][tag] = {
                "share_first_letter": dict(zip(at_layer.n, at_layer.share_first_letter.round(3), strict=True)),
                "cosine_to_heldout_at_layer": dict(zip(at_layer.n, at_layer.cosine_to_heldout.round(3), strict=True)),
                "null_at_layer": dict(zip(at_layer.n, zip(at_layer.null_low.round(3), at_layer.null_high.round(3), strict=True), strict=True)),
                "ci_at_layer": dict(zip(at_layer.n, zip(at_layer.ci_low.round(3), at_layer.ci_high.round(3), strict=True), strict=True)),
                "split_half_at_layer": dict(zip(at_layer.n, at_layer.split_half.round(3), strict=True)),
                "effect_by_n": dict(zip(effect.table.n, effect.table.effect.round(3), strict=True)),
            }  # fmt: skip
            if draw:
                plots.plot_sample_size(scaled, [4, layer, 24], effect, figures / f"sample_size_{tag}.png")
        done("scaling")

    if stage("ratio"):
        wiki = read_text(args.shared_data / "text" / "wiki.test.raw", max_chars=20000)
        trade_ratios = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5)
        trade = norms.ratio_tradeoff(
            model, vector, layer, evaluation, wiki, trade_ratios, max_tokens=768, context=256
        )
        trade.table.to_csv(out / "ratio_tradeoff.csv", index=False)
        summary["ratio"] = {
            "reference_norm": trade.reference_norm, "baseline_score": trade.baseline_score,
            "baseline_perplexity": trade.baseline_perplexity, "best_ratio": trade.best_ratio,
        }  # fmt: skip
        if draw:
            plots.plot_ratio_tradeoff(trade, figures / "ratio_tradeoff.png")
        done("ratio")

    if stage("interference"):
        behaviour_vectors = {"refusal": vector}
        datasets = {"refusal": _balanced(evaluation, 20, args.seed, ":20")}
        for name in OTHER_BEHAVIOURS:
            data = load_behaviour_dataset(caa / "generate" / name / "generate_dataset.json")
            behaviour_vectors[name] = contrastive_vector(
                model,
                extract_contrastive(
                    model, _balanced(data, 100, args.seed, ":b100"), layers=[layer], batch_size=8
                ),
            )
            held = load_behaviour_dataset(caa / "test" / name / "test_dataset_ab.json", name=f"{name}_test")
            datasets[name] = _balanced(held, 20, args.seed, ":20")
        matrix = interference.interference_matrix(model, behaviour_vectors, datasets, layer, multiplier)
        matrix.to_frame().to_csv(out / "interference.csv", index=False)
        summary["interference_baseline"] = dict(zip(matrix.scored, matrix.baseline.tolist(), strict=True))
        if draw:
            plots.plot_interference(matrix, figures / "interference.png")
        done("interference")

    if stage("reversal"):
        config = reversal.ReversalConfig(
            n_tokens=8, lambdas=(0.0, 0.02, 0.1), children_per_member=8, top_k=64, iterations=1000,
            time_budget_s=args.reversal_budget, seed=args.seed,
        )  # fmt: skip
        attack = args.reversal_multiplier if args.reversal_multiplier is not None else multiplier
        found = reversal.reversal_search(model, vector, layer, attack, search_items, heldout, config)
        found.best.to_csv(out / "reversal_best.csv", index=False)
        found.pareto.to_csv(out / "reversal_pareto.csv", index=False)
        found.history.to_csv(out / "reversal_history.csv", index=False)
        summary["reversal"] = {
            "layer": found.layer,
            "multiplier": found.multiplier,
            "unsteered": found.unsteered, "steered": found.steered, "heldout_unsteered": found.heldout_unsteered,
            "heldout_steered": found.heldout_steered, "iterations": found.iterations, "elapsed_s": found.elapsed_s,
            "stopped_by": found.stopped_by, "n_evaluated": found.n_evaluated, "reversed": found.reversed,
            "best": found.best.drop(columns=["token_ids"]).to_dict(orient="records"),
            "verdict": found.verdict,
            "effects": found.effects.to_dict(orient="records") if found.effects is not None else [],
        }  # fmt: skip
        if draw:
            plots.plot_reversal_progress(found, figures / "reversal_progress.png")
        done("reversal")
    save_summary()
    print(json.dumps(summary, indent=1, default=float)[:4000])


if __name__ == "__main__":
    main()
