"""The refusal study's analyses (part of ``caa-lens refusal``): one function per stage.

Each stage writes CSV tables the figures can be redrawn from (and the figure, unless figures are off) and
its headline numbers into ``summary.json`` (``Study.save``). The vector comes from the letter-balanced
training pairs (``Study.acts``, per-example activations at every layer); behaviour is scored on the
held-out test items. No layer is assumed: candidate layers, the pick window and the figures' layers
are the default model's (30 layers) at the same depth fractions of the model's own layer count.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from analysis import interference, letters, norms, pca, plots, reversal, scaling, similarity, transfer
from analysis._scoring import layer_scores, prefix_batches
from analysis.ratio_tradeoff import ratio_tradeoff
from analysis.reversal_search import reversal_search
from analysis.size_effect import steering_effect_by_size, subset_vectors
from caa_lens.capability import read_text
from caa_lens.data import FIBONACCI_SIZES, ContrastiveDataset, resolve_dataset
from caa_lens.extraction import ContrastiveActivations, extract_contrastive
from caa_lens.hooks import layer_at_depth
from caa_lens.methods import contrastive_vector
from caa_lens.residuals import multiplier_for_ratio
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["ANALYSIS_STAGES", "Study"]

ANALYSIS_STAGES = (
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


@dataclass
class Study:
    """What the analysis stages share: the model, the data splits, the vector and the summary file."""

    model: "TransformerBridge"
    out: Path
    generate: ContrastiveDataset  # every training pair (the letter shares of the what-if columns)
    train: ContrastiveDataset  # the letter-balanced pairs the vector is built from
    evaluation: ContrastiveDataset  # letter-balanced held-out items every stage scores
    search_items: ContrastiveDataset  # the reversal search's items
    heldout: ContrastiveDataset  # the reversal's held-out items
    acts: ContrastiveActivations
    vector: SteeringVector
    others: tuple[tuple[str, str, str], ...]  # (name, train, test) of the interference behaviours
    reference_text: Path | None  # perplexity text of the ratio study (None: norms' default)
    seed: int = 0
    ratio: float = 0.25  # ||m v|| / ||resid|| the sweep picks the multiplier by
    layer: int | None = None  # None: picked by the sweep stage
    multiplier: float | None = None  # None: --ratio at the chosen layer
    reversal_budget: float = 540.0
    reversal_multiplier: float | None = None
    reversal_min_items: int = 20
    figures: bool = True
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def figure_dir(self) -> Path:
        return self.out / "figures"

    def save(self, timings: dict[str, float] | None = None) -> None:
        """Write ``summary.json`` (with the stage timings so far)."""
        if timings is not None:
            self.summary["seconds"] = {**self.summary.get("seconds", {}), **timings}
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1, default=float))

    def steering(self) -> tuple[int, float]:
        """The steering layer and multiplier: given, else the sweep stage's picks, else the middle layer."""
        picked = self.summary.get("sweep", {})
        layer = (
            self.layer
            if self.layer is not None
            else picked.get("chosen_layer", layer_at_depth(12, self.n_layers))
        )
        multiplier = self.multiplier if self.multiplier is not None else picked.get("chosen_multiplier", 8.0)
        return int(layer), float(multiplier)

    def stages(self) -> dict[str, Callable[[], None]]:
        """Every analysis stage by name, in the order they run."""
        return {name: getattr(self, f"_{name}") for name in ANALYSIS_STAGES}

    def _letters(self) -> None:
        assert self.acts.examples is not None
        decomposition = letters.letter_decomposition(self.acts)
        table = decomposition.table
        differences = scaling.pair_differences(self.acts).double()
        first = torch.tensor([label == "A" for label in self.acts.examples.positive_labels])
        letter = (differences[first].mean(0) - differences[~first].mean(0)) / 2
        behaviour = (differences[first].mean(0) + differences[~first].mean(0)) / 2
        # What a plain mean difference would be at other letter shares: b + (2 f - 1) L, exactly; the
        # shares of matching A among all training pairs and among the first len(train) of them.
        n = len(self.train)
        shares = (
            ("generate_all", _share_a(self.generate, range(len(self.generate)))),
            (f"first_{n}", _share_a(self.generate, range(min(n, len(self.generate))))),
        )
        for name, share in shares:
            skewed = behaviour + (2 * share - 1) * letter
            table[f"cos_behaviour_if_{name}"] = torch.nn.functional.cosine_similarity(
                skewed, behaviour, dim=-1
            ).tolist()
        table.to_csv(self.out / "letter_decomposition.csv", index=False)
        self.summary["letters_decomposition"] = {
            column: table[column].round(3).tolist() for column in table.columns if column != "layer"
        }

    def _similarity(self) -> None:
        result = similarity.layer_similarity(self.vector)
        n = len(result.layers)
        pd.DataFrame(
            [(i, j, float(result.matrix[i, j])) for i in range(n) for j in range(n)],
            columns=["layer_i", "layer_j", "cosine"],
        ).to_csv(self.out / "layer_similarity.csv", index=False)
        result.by_distance.to_csv(self.out / "layer_similarity_by_distance.csv", index=False)
        methods = similarity.mean_vs_pca(self.model, self.acts)
        methods.table.to_csv(self.out / "method_similarity.csv", index=False)
        self.summary["similarity"] = {
            "adjacent_mean": result.mean_at([1]),
            "distance_2_to_4_mean": result.mean_at([2, 3, 4]),
            "distance_10_plus_mean": result.mean_at(range(10, n)),
            "distance_20_plus_mean": result.mean_at(range(20, n)),
            "mean_vs_pca_cosine_by_layer": methods.table.cosine.round(3).tolist(),
        }
        if self.figures:
            plots.plot_layer_similarity(
                result, "Refusal vectors: cosine between layers", self.figure_dir / "layer_similarity.png"
            )

    def _norms(self) -> None:
        profile = norms.norm_profile(self.model, self.vector, self.evaluation)
        profile.table.to_csv(self.out / "norm_profile.csv", index=False)
        self.summary["norms"] = {
            c: [round(float(x), 4) for x in profile.table[c]]
            for c in profile.table.columns
            if c.startswith("ratio")
        }
        if self.figures:
            plots.plot_norm_profile(profile, self.figure_dir / "norm_profile.png")

    def _pca(self) -> None:
        acts = self.acts
        assert acts.examples is not None
        projections = pca.pca_projections(acts.examples, acts.layers)
        rows = [
            {"layer": layer, "example": e, "pc1": float(c[e, 0]), "pc2": float(c[e, 1]),
             "side": int(projections.side[e]), "letter": projections.letters[e]}
            for layer, c in zip(projections.layers, projections.coordinates, strict=True)
            for e in range(c.shape[0])
        ]  # fmt: skip
        pd.DataFrame(rows).to_csv(self.out / "pca_projections.csv", index=False)
        self.summary["separability"] = {}
        for probe in ("logistic", "mean_difference"):
            sep = pca.separability(acts.examples, acts.layers, probe=probe, seed=self.seed)
            sep.table.to_csv(self.out / f"separability_{probe}.csv", index=False)
            self.summary["separability"][probe] = {
                "behaviour": sep.table.behaviour_accuracy.round(3).tolist(),
                "letter": sep.table.letter_accuracy.round(3).tolist(),
            }
            if self.figures:
                plots.plot_separability(sep, self.figure_dir / f"separability_{probe}.png")
        if self.figures:
            grid = list(range(0, self.n_layers, 2))
            plots.plot_pca_grid(projections, grid, save=self.figure_dir / "pca_grid.png")

    def _sweep(self) -> None:
        # Strengths as ratios of each layer's residual norm: a fixed multiplier means very different
        # things at layer 2 (||resid|| ~ 80) and layer 28 (~ 700) of the default model.
        profile_path = self.out / "norm_profile.csv"
        if not profile_path.exists():
            norms.norm_profile(self.model, self.vector, self.evaluation).table.to_csv(
                profile_path, index=False
            )
        reference = pd.read_csv(profile_path).set_index("layer")["resid_all_but_first"]
        ratios = (-1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0)
        batches = prefix_batches(self.model, self.evaluation)
        rows = []
        for candidate in range(0, self.n_layers, 2):
            values = [
                multiplier_for_ratio(self.vector, candidate, r, float(reference[candidate])) if r else 0.0
                for r in ratios
            ]
            scores = layer_scores(self.model, batches, [self.vector], candidate, values).mean(0)[0]
            rows += [
                {"layer": candidate, "ratio": r, "multiplier": m, "p_matching": float(p)}
                for r, m, p in zip(ratios, values, scores, strict=True)
            ]
        sweep = pd.DataFrame(rows)
        sweep.to_csv(self.out / "layer_multiplier_sweep.csv", index=False)
        wide = sweep.pivot(index="layer", columns="ratio", values="p_matching")
        swings = {r: (wide[r] - wide[-r]).round(4).to_dict() for r in ratios if r > 0}
        layer, multiplier = self.layer, self.multiplier
        if layer is None:
            # The middle of the network: layers 6..20 of the default model's 30, at the same depths.
            low, high = layer_at_depth(6, self.n_layers), layer_at_depth(20, self.n_layers)
            layer = int((wide[self.ratio] - wide[-self.ratio]).loc[low:high].idxmax())
        if multiplier is None:
            cell = sweep[(sweep.layer == layer) & (sweep.ratio == self.ratio)]
            multiplier = float(cell.multiplier.iloc[0])
        self.summary["sweep"] = {
            "swing_by_ratio_and_layer": swings,
            "chosen_layer": layer,
            "chosen_multiplier": multiplier,
        }

    def _transfer(self) -> None:
        _, multiplier = self.steering()
        chosen = list(range(0, self.n_layers, 3))
        items = letters.balanced_subset(self.evaluation, min(20, len(self.evaluation)), self.seed, ":20")
        result = transfer.layer_transfer(self.model, self.vector, items, chosen, chosen, multiplier)
        pd.DataFrame(
            [
                {"read": r, "apply": a, "plus": float(result.plus[i, j]), "minus": float(result.minus[i, j]),
                 "effect": float(result.effect[i, j])}
                for i, r in enumerate(result.read_layers) for j, a in enumerate(result.apply_layers)
            ]
        ).to_csv(self.out / "layer_transfer.csv", index=False)  # fmt: skip
        self.summary["transfer_baseline"] = result.baseline
        if self.figures:
            plots.plot_layer_transfer(result, self.figure_dir / "layer_transfer.png")

    def _scaling(self) -> None:
        layer, multiplier = self.steering()
        sizes = [n for n in FIBONACCI_SIZES if n <= len(self.train)]
        self.summary["scaling"] = {}
        # Plain means (as the papers) and letter-balanced means: each nested subset has its own
        # letter imbalance, which dominates the plain curves on the default model.
        for tag, balance in (("plain", False), ("letter_balanced", True)):
            scaled = scaling.sample_size_scaling(
                self.acts, self.train, sizes, seed=self.seed, balance_letters=balance
            )
            scaled.table.to_csv(self.out / f"sample_size_{tag}.csv", index=False)
            vectors = subset_vectors(
                self.model, self.acts, self.train, sizes, seed=self.seed, balance_letters=balance
            )
            effect = steering_effect_by_size(self.model, vectors, self.evaluation, layer, multiplier)
            effect.table.to_csv(self.out / f"sample_size_effect_{tag}.csv", index=False)
            at_layer = scaled.table[scaled.table.layer == layer]
            self.summary["scaling"][tag] = {
                "share_first_letter": dict(zip(at_layer.n, at_layer.share_first_letter.round(3), strict=True)),
                "cosine_to_heldout_at_layer": dict(zip(at_layer.n, at_layer.cosine_to_heldout.round(3), strict=True)),
                "null_at_layer": dict(zip(at_layer.n, zip(at_layer.null_low.round(3), at_layer.null_high.round(3), strict=True), strict=True)),
                "ci_at_layer": dict(zip(at_layer.n, zip(at_layer.ci_low.round(3), at_layer.ci_high.round(3), strict=True), strict=True)),
                "split_half_at_layer": dict(zip(at_layer.n, at_layer.split_half.round(3), strict=True)),
                "effect_by_n": dict(zip(effect.table.n, effect.table.effect.round(3), strict=True)),
            }  # fmt: skip
            if self.figures:
                shown = [layer_at_depth(4, self.n_layers), layer, layer_at_depth(24, self.n_layers)]
                plots.plot_sample_size(scaled, shown, effect, self.figure_dir / f"sample_size_{tag}.png")

    def _ratio(self) -> None:
        layer, _ = self.steering()
        text = read_text(self.reference_text, max_chars=20000) if self.reference_text is not None else None
        trade_ratios = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5)
        trade = ratio_tradeoff(
            self.model, self.vector, layer, self.evaluation, text, trade_ratios, max_tokens=768, context=256
        )
        trade.table.to_csv(self.out / "ratio_tradeoff.csv", index=False)
        self.summary["ratio"] = {
            "reference_norm": trade.reference_norm, "baseline_score": trade.baseline_score,
            "baseline_perplexity": trade.baseline_perplexity, "best_ratio": trade.best_ratio,
        }  # fmt: skip
        if self.figures:
            plots.plot_ratio_tradeoff(trade, self.figure_dir / "ratio_tradeoff.png")

    def _interference(self) -> None:
        layer, multiplier = self.steering()
        n = min(20, len(self.evaluation))
        behaviour_vectors = {"refusal": self.vector}
        datasets = {"refusal": letters.balanced_subset(self.evaluation, n, self.seed, ":20")}
        for name, train_spec, test_spec in self.others:
            data = resolve_dataset(train_spec)
            pairs = letters.balanced_subset(data, min(100, len(data)), self.seed, ":b100")
            acts = extract_contrastive(self.model, pairs, layers=[layer], batch_size=8)
            behaviour_vectors[name] = contrastive_vector(self.model, acts)
            held = resolve_dataset(test_spec)
            held = replace(held, name=f"{name}_test")
            datasets[name] = letters.balanced_subset(held, min(20, len(held)), self.seed, ":20")
        matrix = interference.interference_matrix(self.model, behaviour_vectors, datasets, layer, multiplier)
        matrix.to_frame().to_csv(self.out / "interference.csv", index=False)
        self.summary["interference_baseline"] = dict(
            zip(matrix.scored, matrix.baseline.tolist(), strict=True)
        )
        if self.figures:
            plots.plot_interference(matrix, self.figure_dir / "interference.png")

    def _reversal(self) -> None:
        layer, multiplier = self.steering()
        config = reversal.ReversalConfig(
            n_tokens=8, lambdas=(0.0, 0.02, 0.1), children_per_member=8, top_k=64, iterations=1000,
            time_budget_s=self.reversal_budget, seed=self.seed, min_items=self.reversal_min_items,
        )  # fmt: skip
        attack = self.reversal_multiplier if self.reversal_multiplier is not None else multiplier
        found = reversal_search(
            self.model, self.vector, layer, attack, self.search_items, self.heldout, config
        )
        found.best.to_csv(self.out / "reversal_best.csv", index=False)
        found.pareto.to_csv(self.out / "reversal_pareto.csv", index=False)
        found.history.to_csv(self.out / "reversal_history.csv", index=False)
        self.summary["reversal"] = {
            "layer": found.layer,
            "multiplier": found.multiplier,
            "unsteered": found.unsteered, "steered": found.steered, "heldout_unsteered": found.heldout_unsteered,
            "heldout_steered": found.heldout_steered, "iterations": found.iterations, "elapsed_s": found.elapsed_s,
            "stopped_by": found.stopped_by, "n_evaluated": found.n_evaluated, "reversed": found.reversed,
            "best": found.best.drop(columns=["token_ids"]).to_dict(orient="records"),
            "verdict": found.verdict,
            "effects": found.effects.to_dict(orient="records") if found.effects is not None else [],
        }  # fmt: skip
        if self.figures:
            plots.plot_reversal_progress(found, self.figure_dir / "reversal_progress.png")


def _share_a(dataset: ContrastiveDataset, indices: range) -> float:
    counts = letters.letter_counts(dataset, indices)
    return counts.get("A", 0) / max(1, sum(counts.values()))
