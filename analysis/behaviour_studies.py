"""The bundled behaviours' open-ended studies: each behaviour's spec (metric, scorers, strengths), its
bundled prompts, its candidate vectors, and the run of every study (``behaviour_study`` each).
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING

from analysis.behaviour_study import BehaviourSpec, BehaviourStudy, StudyConfig, behaviour_study
from caa_lens.data import ContrastiveDataset
from caa_lens.ood import OODPrompt
from caa_lens.vectors import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["bundled_prompts", "bundled_specs", "reply_text_vector", "run_studies"]


def bundled_specs() -> dict[str, BehaviourSpec]:
    """The open-ended reading of each bundled behaviour (the prompts are ``data/<name>/open_ended.json``;
    weddings, an ActAdd topic, reads the optimism prompts, which name no topic).

    Formality is steered *away* from formal (negative ratios) and read by casual markers, because
    the default model's replies are already formal: there is room to move only one way.
    """
    from caa_lens.lexicons import (
        AGREEMENT_PHRASES,
        CASUAL_WORDS,
        DISAGREEMENT_PHRASES,
        REFUSAL_PHRASES,
        WEDDING_WORDS,
    )
    from caa_lens.scorers import PhraseScorer, SentimentScorer, WordRateScorer

    # Norm ratios: at 0.5 and above every vector cost more than 0.5 nats/token on this model (measured).
    up = (0.15, 0.3)
    return {
        "refusal": BehaviourSpec("refusal", "refusal", (PhraseScorer("refusal", REFUSAL_PHRASES),), up),
        "optimism": BehaviourSpec("optimism", "sentiment", (SentimentScorer(),), up),
        "formality": BehaviourSpec(
            "formality", "casual_rate", (WordRateScorer("casual", CASUAL_WORDS),), tuple(-m for m in up)
        ),
        "sycophancy": BehaviourSpec(
            "sycophancy",
            "agreement",
            (
                PhraseScorer("agreement", AGREEMENT_PHRASES),
                PhraseScorer("disagreement", DISAGREEMENT_PHRASES),
            ),
            up,
        ),
        "weddings": BehaviourSpec(
            "weddings",
            "wedding_any",
            (WordRateScorer("wedding", WEDDING_WORDS),),
            (1.0, 2.0),
            mode="front",
            layers=(2, 4, 6),  # ActAdd steers early (GPT-2-XL: 6 of 48); measured best at 2-4 here
        ),
    }


def bundled_prompts(behaviour: str) -> tuple[OODPrompt, ...] | None:
    """The bundled open-ended prompts a behaviour is read on (``None`` for a behaviour without them)."""
    from importlib import resources

    from caa_lens.ood import load_ood_prompts

    source = "optimism" if behaviour == "weddings" else behaviour
    path = resources.files("caa_lens") / "data" / source / "open_ended.json"
    return load_ood_prompts(str(path)) if path.is_file() else None


def reply_text_vector(
    model: "TransformerBridge", dataset: ContrastiveDataset, layers: Sequence[int]
) -> SteeringVector:
    """A vector read at the last token of each option's *text* given as the reply (no letter anywhere:
    ``caa_lens.answer_texts.letter_free_dataset``), the plain mean difference over pairs."""
    from caa_lens.answer_texts import letter_free_dataset
    from caa_lens.extraction import extract_contrastive
    from caa_lens.methods import contrastive_vector

    texts = letter_free_dataset(dataset)
    activations = extract_contrastive(model, texts, list(layers), position_rule="last", progress=False)
    return contrastive_vector(model, activations, method="mean_difference")


def run_studies(
    model: "TransformerBridge",
    vectors: dict[str, SteeringVector],
    config: StudyConfig,
    max_prompts: int | None = None,
    progress: bool = False,
    training: dict[str, ContrastiveDataset] | None = None,
) -> list[BehaviourStudy]:
    """The study of every behaviour in ``vectors`` that has a bundled spec and prompts, plus ActAdd's
    weddings topic (its vector built here from the bundled prompt pair at the topic spec's layers).

    With ``training`` (the A/B sets the vectors were built from), each behaviour also gets a candidate
    read at the end of the reply text (``reply_text_vector``, named ``<behaviour>-text``) beside the
    answer-letter vector, and the selection prompts choose between them.
    """
    from caa_lens.data import bundled_prompt_pairs
    from caa_lens.methods import actadd_vector

    specs = bundled_specs()
    pair = next(p for p in bundled_prompt_pairs() if p.name == "weddings")
    candidates: dict[str, dict[str, SteeringVector]] = {
        name: {name: vector} for name, vector in vectors.items() if name in specs
    }
    for name in candidates:
        if training is not None and name in training:
            candidates[name][f"{name}-text"] = reply_text_vector(model, training[name], config.layers)
    topic_layers = [layer for layer in specs["weddings"].layers or () if layer < model.cfg.n_layers]
    candidates["weddings"] = {"weddings": actadd_vector(model, pair, topic_layers or list(config.layers))}
    studies = []
    for name, options in candidates.items():
        prompts = bundled_prompts(name)
        if prompts is None:
            print(f"[behaviours] {name}: no open-ended prompts bundled; skipped")
            continue
        study = behaviour_study(model, options, prompts[:max_prompts], specs[name], config, progress)
        effect = study.report.set_index("metric").loc[study.metric, "effect"]
        print(
            f"[behaviours] {name}: {study.vector} at layer {study.layer}, ratio {study.ratio:g} "
            f"(m={study.multiplier:.3g}): {study.metric} {effect:+.3f} "
            f"({'passes' if study.passed else 'fails'}, {study.seconds:.0f} s)",
            flush=True,
        )
        studies.append(study)
    return studies
