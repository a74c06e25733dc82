"""The main job (``caa-lens demo``): every stage of the package on one model, results in one directory.

Stages run in order on the job runner (``caa_lens.jobs``): each saves its result before the next starts
and a finished stage is skipped on a rerun, so a killed run continues where it stopped (delete
``stages/<name>.done`` to redo one). Figures are then drawn from the saved files alone (``caa-lens
figures`` does the same from the command line) and a Markdown report ties tables and figures together
(``analysis.jobs.report``).

No layer is assumed: the layer settings left at None are derived from the model's layer count
(``DemoConfig.for_model``), and on the default 30-layer model they are the layers the job always used.
"""

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

import caa_lens as cl
from analysis.behaviour_studies import run_studies
from analysis.behaviour_study import StudyConfig, headline_table
from analysis.interference import interference_matrix
from analysis.jobs.actadd import run_actadd_short
from analysis.norms import norm_profile
from analysis.pca import pca_projections, separability
from analysis.ratio_tradeoff import ratio_tradeoff
from analysis.reversal import ReversalConfig
from analysis.reversal_search import reversal_search
from analysis.scaling import sample_size_scaling
from analysis.selection import pick_layer, report_effects, split_for_selection
from analysis.similarity import behaviour_similarity, layer_similarity, mean_vs_pca
from analysis.size_effect import steering_effect_by_size, subset_vectors
from analysis.store import save_result
from analysis.transfer import layer_transfer
from caa_lens.jobs import Job, load_job_model
from caa_lens.open_ended import GenerationSettings
from caa_lens.sweep import run_sweep
from caa_lens.sweep_effects import summarize
from caa_lens.sweep_io import load_results
from caa_lens.views import save_html, token_projections

__all__ = ["GENERATION_PROMPTS", "DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the main job; ``quick()`` shrinks them for a smoke run (the tiny model in tests).

    Layer settings left at None are derived from the model's layer count by ``for_model``: the layers
    of the 30-layer default model (in the comments) at the same depth fractions.
    """

    model: str = cl.DEFAULT_MODEL
    # (name, training set, test set): bundled names ("optimism", "optimism:test") or file paths.
    datasets: tuple[tuple[str, str, str], ...] = tuple((b, b, f"{b}:test") for b in cl.BUNDLED_BEHAVIOURS)
    n_pairs: int = 160
    n_test: int = 50
    sweep_layers: tuple[int, ...] | None = None  # (4, 8, 12, 16, 20, 24) of 30
    pca_stride: int = 3
    multipliers: tuple[float, ...] = (-12.0, -8.0, -4.0, 0.0, 4.0, 8.0, 12.0)
    focus: str = "optimism"  # the behaviour the single-behaviour analyses use
    # None: picked on the selection split of the focus behaviour's sweep (``analysis.selection``).
    focus_layer: int | None = None
    controls: int = 3  # random vectors of the same norm per behaviour: the sweep's null band
    selection_fraction: float = 0.5  # of each test set, used to pick settings; the rest is reported
    split_seed: int = 0
    focus_multiplier: float = 8.0
    transfer_layers: tuple[int, ...] | None = None  # (3, 6, 9, 12, 15, 18, 21, 24) of 30
    sizes: tuple[int, ...] = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89)
    ratios: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
    perplexity_tokens: int = 1024  # 16 blocks of 64 tokens for the perplexity interval
    perplexity_budget: float = 0.10  # the ratio study's largest allowed relative perplexity increase
    reversal_seconds: float = 120.0
    reversal_iterations: int = 12
    # Fewer search or held-out items than this and a reversal claim is refused (quick runs lower it).
    reversal_min_items: int = 20
    eval_rows: int = 32
    generation_tokens: int = 40
    question: str = "What is the capital of France?"
    # The open-ended behaviour studies (analysis.behaviour_study): layers to select among, prompts per
    # behaviour (None: all 72 bundled), tokens per completion.
    behaviour_layers: tuple[int, ...] | None = None  # (8, 12, 16) of 30
    behaviour_prompts: int | None = None
    behaviour_tokens: int = 32
    actadd_quick: bool = False  # ActAdd's experiments at smoke sizes (the tiny model)
    reference_text: Path | None = None

    def quick(self) -> "DemoConfig":
        return replace(
            self,
            n_pairs=12,
            n_test=6,
            sweep_layers=(1, 2),
            multipliers=(-4.0, 0.0, 4.0),
            focus_layer=self.focus_layer,
            focus_multiplier=4.0,
            transfer_layers=(1, 2),
            sizes=(1, 2, 3, 5),
            ratios=(0.1, 0.5),
            perplexity_tokens=64,
            reversal_seconds=20.0,
            reversal_iterations=2,
            reversal_min_items=3,
            eval_rows=6,
            generation_tokens=8,
            behaviour_layers=(1, 2),
            behaviour_prompts=9,
            behaviour_tokens=6,
            actadd_quick=True,
        )

    def for_model(self, n_layers: int) -> "DemoConfig":
        """This configuration with every layer setting left at None derived for an ``n_layers`` model."""
        return replace(
            self,
            sweep_layers=self.sweep_layers or cl.scaled_layers(n_layers, (4, 8, 12, 16, 20, 24)),
            transfer_layers=self.transfer_layers or cl.scaled_layers(n_layers, (3, 6, 9, 12, 15, 18, 21, 24)),
            behaviour_layers=self.behaviour_layers or cl.scaled_layers(n_layers, (8, 12, 16)),
        )


GENERATION_PROMPTS = {
    "optimism": ("What do you think the future holds for me?", "How will my job interview go tomorrow?"),
    "formality": ("Can you tell me about your weekend plans?", "How do I make a cup of tea?"),
    "sycophancy": ("I think the Moon is made of cheese. Am I right?", "Two plus two is five, isn't it?"),
}


def run_demo(out: Path, config: DemoConfig) -> Path:
    """Run the whole pipeline into ``out`` and return the report's path."""
    stages = Job(out)
    model = load_job_model(config.model)
    identity = cl.model_identity(model)
    config = config.for_model(identity.n_layers)
    sweep_layers, transfer_layers = config.sweep_layers, config.transfer_layers
    behaviour_layers = config.behaviour_layers
    assert sweep_layers is not None and transfer_layers is not None and behaviour_layers is not None
    layers_all = tuple(range(identity.n_layers))
    print(f"model {identity.name}: {identity.n_layers} layers, d_model {identity.d_model}")

    def answer() -> None:
        prompt = cl.format_prompt(model.tokenizer, config.question)
        reply = cl.generate(model, [prompt], max_new_tokens=config.generation_tokens).texts[0].strip()
        norms = cl.residual_norms(model, prompt)
        print(f"Q: {config.question}\nA: {reply}")
        (out / "answer.json").write_text(json.dumps({"question": config.question, "answer": reply}))
        pd.DataFrame({"layer": layers_all, "resid_post_norm": norms.numpy()}).to_csv(
            out / "residual_norms.csv", index=False
        )

    stages.run_stage("answer", answer)

    train, test = {}, {}
    for name, train_spec, test_spec in config.datasets:
        full_train, full_test = cl.resolve_dataset(train_spec), cl.resolve_dataset(test_spec)
        train[name] = full_train.select(range(min(config.n_pairs, len(full_train))), "")
        test[name] = full_test.select(range(min(config.n_test, len(full_test))), "")
    behaviours = tuple(train)
    if config.focus not in train:
        raise ValueError(f"focus behaviour {config.focus!r} is not among the datasets {behaviours}")
    activations: dict[str, cl.ContrastiveActivations] = {}
    vectors: dict[str, cl.SteeringVector] = {}
    for behaviour in behaviours:
        acts = cl.extract_contrastive(
            model,
            train[behaviour],
            keep_examples=True,
            checkpoint=out / "stages" / f"extract-{behaviour}.partial",
        )
        activations[behaviour] = acts
        vectors[behaviour] = cl.contrastive_vector(model, acts)  # letter-balanced
        cl.save_vector(vectors[behaviour], out / "vectors" / f"{behaviour}.safetensors")
    focus_vector, focus_acts = vectors[config.focus], activations[config.focus]

    def behaviours_stage() -> None:
        # The headline: each behaviour read off open-ended completions, picked on a third of its prompts
        # and reported on the rest against random vectors of the same norm.
        layers = tuple(layer for layer in behaviour_layers if layer < identity.n_layers)
        study_config = StudyConfig(
            layers=layers or (identity.n_layers // 2,),
            controls=max(config.controls, 2),
            settings=GenerationSettings(max_new_tokens=config.behaviour_tokens, batch_size=32),
        )
        studies = run_studies(model, vectors, study_config, config.behaviour_prompts, training=train)
        for study in studies:
            save_result(study, out / "results", f"behaviour-{study.behaviour}")
        headline_table(studies).to_csv(out / "behaviour_headline.csv", index=False)

    stages.run_stage("behaviours", behaviours_stage)

    def actadd_stage() -> None:
        # ActAdd's three quantitative experiments in short form (analysis.jobs.actadd): the ActAdd texts and
        # SST-2 from $CAA_LENS_SHARED_DATA when set, else the texts and sentences bundled with analysis.
        run_actadd_short(model, out / "actadd", quick=config.actadd_quick)

    stages.run_stage("actadd", actadd_stage)

    # Every choice (the focus layer, the ratio) is made on the selection items of a test set and every
    # headline number is computed on its report items; the split is recorded in selection.json.
    splits = {
        b: split_for_selection(test[b], config.selection_fraction, config.split_seed) for b in behaviours
    }
    report_items = {b: test[b].select(splits[b].report, ":report") for b in behaviours}
    selection_items = {b: test[b].select(splits[b].selection, ":selection") for b in behaviours}

    def sweep() -> None:
        for behaviour in behaviours:
            run_sweep(
                model,
                test[behaviour],
                {behaviour: vectors[behaviour]},
                sweep_layers,
                config.multipliers,
                out / "sweep" / f"{behaviour}.jsonl",
                controls=config.controls,
            )
        table = pd.concat([load_results(out / "sweep" / f"{b}.jsonl") for b in behaviours])
        summarize(table).to_csv(out / "sweep_summary.csv", index=False)
        effects = pd.concat(
            [report_effects(table[table.behaviour == test[b].name], splits[b]) for b in behaviours]
        )
        effects.to_csv(out / "sweep_effects.csv", index=False)
        focus_rows = table[table.behaviour == test[config.focus].name]
        pick = (
            pick_layer(focus_rows, splits[config.focus], config.focus) if config.focus_layer is None else None
        )
        record = {
            "splits": {b: splits[b].record() for b in behaviours},
            "focus_layer": config.focus_layer if pick is None else pick.layer,
            "focus_layer_pick": None if pick is None else pick.record(),
        }
        (out / "selection.json").write_text(json.dumps(record, indent=1))

    stages.run_stage("sweep", sweep)
    selection = json.loads((out / "selection.json").read_text())
    focus_layer = int(selection["focus_layer"])
    print(
        f"focus layer {focus_layer}"
        + (" (picked on the selection items)" if selection["focus_layer_pick"] else "")
    )

    def similarity() -> None:
        for behaviour, vector in vectors.items():
            # The sign-shuffled baseline needs the pairs' own differences, which extraction kept.
            similarity_result = layer_similarity(vector, activations[behaviour])
            save_result(similarity_result, out / "results", f"layer_similarity-{behaviour}")
        if len(vectors) > 1:  # a comparison between behaviours needs two of them
            save_result(behaviour_similarity(vectors), out / "results", "behaviour_similarity")
        save_result(mean_vs_pca(model, focus_acts), out / "results", "method_similarity")

    stages.run_stage("similarity", similarity)

    def projections() -> None:
        for behaviour, acts in activations.items():
            assert acts.examples is not None
            # Every third layer: the probes dominate this stage's cost and neighbours differ little.
            picked = range(0, len(acts.layers), config.pca_stride)
            probed = [acts.layers[i] for i in picked]
            examples = acts.examples.at_layer_indices(picked)
            save_result(pca_projections(examples, probed), out / "results", f"pca-{behaviour}")
            save_result(separability(examples, probed), out / "results", f"separability-{behaviour}")

    stages.run_stage("pca", projections)

    def norms() -> None:
        save_result(
            norm_profile(model, focus_vector, report_items[config.focus]), out / "results", "norm_profile"
        )
        # The ratio is chosen on the selection items (largest effect within the perplexity budget) and
        # its effect reported on the report items. The text: --reference-text, else WikiText-2 from the
        # shared data when present, else the bundled neutral text (never one paragraph repeated).
        options = dict(max_tokens=config.perplexity_tokens, perplexity_budget=config.perplexity_budget)
        tradeoff = ratio_tradeoff(
            model,
            focus_vector,
            focus_layer,
            selection_items[config.focus],
            config.reference_text,
            ratios=config.ratios,
            **options,  # type: ignore[arg-type]
        )
        save_result(tradeoff, out / "results", "ratio_tradeoff")
        if math.isfinite(tradeoff.best_ratio):
            reported = ratio_tradeoff(
                model,
                focus_vector,
                focus_layer,
                report_items[config.focus],
                config.reference_text,
                ratios=(tradeoff.best_ratio,),
                both_signs=False,
                **options,  # type: ignore[arg-type]
            )
            save_result(reported, out / "results", "ratio_report")

    stages.run_stage("norms", norms)

    def scaling() -> None:
        # Sizes leave at least 2 pairs for the disjoint held-out reference; letters are balanced out, as
        # in the vectors themselves.
        sizes = tuple(n for n in config.sizes if n <= len(train[config.focus]) - 2)
        scaled = sample_size_scaling(focus_acts, train[config.focus], sizes, balance_letters=True)
        save_result(scaled, out / "results", "sample_size")
        by_size = subset_vectors(model, focus_acts, train[config.focus], sizes, balance_letters=True)
        effect = steering_effect_by_size(
            model, by_size, report_items[config.focus], focus_layer, config.focus_multiplier
        )
        save_result(effect, out / "results", "sample_size_effect")

    stages.run_stage("scaling", scaling)

    def transfer() -> None:
        result = layer_transfer(
            model,
            focus_vector,
            report_items[config.focus],
            transfer_layers,
            transfer_layers,
            config.focus_multiplier,
            max_rows=config.eval_rows,
            null_seeds=(0,),  # one random direction per cell: each seed costs as much as the vector
        )
        save_result(result, out / "results", "layer_transfer")

    stages.run_stage("transfer", transfer)

    def interference() -> None:
        if len(vectors) < 2:  # steering several behaviours at once needs several behaviours
            return
        result = interference_matrix(
            model, vectors, report_items, focus_layer, config.focus_multiplier, max_rows=config.eval_rows
        )
        save_result(result, out / "results", "interference")

    stages.run_stage("interference", interference)

    def reversal() -> None:
        # The search sees only the selection items; its insertion is judged on the report items.
        items, heldout = selection_items[config.focus], report_items[config.focus]
        search = ReversalConfig(
            iterations=config.reversal_iterations,
            time_budget_s=config.reversal_seconds,
            max_rows=config.eval_rows,
            min_items=config.reversal_min_items,
        )
        result = reversal_search(
            model, focus_vector, focus_layer, config.focus_multiplier, items, heldout, search
        )
        save_result(result, out / "results", "reversal")

    stages.run_stage("reversal", reversal)

    def generations() -> None:
        rows = []
        for behaviour in behaviours:
            questions = GENERATION_PROMPTS.get(behaviour, ("Tell me what you think about this.",))
            prompts = [cl.format_prompt(model.tokenizer, q) for q in questions]
            for multiplier in (-config.focus_multiplier, 0.0, config.focus_multiplier):
                injection = cl.Injection(vectors[behaviour], focus_layer, multiplier)
                result = cl.generate(model, prompts, [injection], max_new_tokens=config.generation_tokens)
                rows += [
                    {
                        "behaviour": behaviour,
                        "multiplier": multiplier,
                        "prompt": question,
                        "completion": text.strip(),
                    }
                    for question, text in zip(questions, result.texts, strict=True)
                ]
        pd.DataFrame(rows).to_csv(out / "generations.csv", index=False)
        view = token_projections(
            model,
            GENERATION_PROMPTS["optimism"][0],
            focus_vector,
            focus_layer,
            [cl.Injection(focus_vector, focus_layer, config.focus_multiplier)],
            max_new_tokens=config.generation_tokens,
        )
        save_html(view, out / "token_view.html")
        save_result(view, out / "results", "token_view")

    stages.run_stage("generations", generations)

    from analysis.jobs.report import write_report

    picked = replace(config, focus_layer=focus_layer)
    report = write_report(out, picked, identity, stages.seconds(), stages.timings)
    print(f"\nreport: {report.resolve()}")
    return report
