"""The RL stage's verifiable rewards: each a small named function with a weight, scored on every sampled answer.

  format    1 when the answer is complete in the trained style (tags.parse_answer, the style's own parser), else 0
  correct   1 when the option extracted from the answer (choices.extract_choice, the one extractor) is the row's
            answer; 0 when it is another option, or when no single option is named (multiple-choice rows)
  verifier  HuatuoGPT-o1's scheme for open-ended rows (medical-o1): 1 for an answer the verifier accepts, 0.1 for a
            well-formed answer it rejects, 0 for a broken form; the verifier is a local or Hub classifier model
            (FreedomIntelligence/medical_o1_verifier_3B is theirs) or the reference judge (ROUGE-L to the reference)
  length    0, or a penalty: -1 for an answer cut by the token budget while repeating itself (tags' "looping"),
            -0.5 for one that ran out of budget otherwise

trl's GRPOTrainer calls each reward function by its name and logs it as rewards/<name>/mean (W&B, log_history);
the weights go to GRPOConfig.reward_weights, and the weighted sum is the reward the advantages are computed from.

Adding a reward takes a few lines here: a function of one Answer returning a float (or None: not applicable), with
the decorator giving its weight; then name it in REWARDS (rl_tuning.py or --REWARDS="{'format': 0.5, 'mine': 1}"):

    @reward(weight=0.2)
    def cites_mechanism(answer: Answer) -> float:
        return float("because" in answer.parsed.response.lower())
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from medreason.answers.choices import extract_choice
from medreason.answers.tags import ParsedAnswer, parse_answer
from medreason.config.errors import UserError
from medreason.evaluate.judging import ReferenceJudge
from medreason.model.for_training import resolve_model_path
from medreason.preference.pairs import Question

LOOPING_PENALTY = -1.0  # an answer cut while repeating itself: the worst use of the budget
CUT_PENALTY = -0.5  # an answer that ran out of the token budget (MAX_NEW_TOKENS) before it ended
VERIFIED, WELL_FORMED_WRONG, BROKEN = 1.0, 0.1, 0.0  # HuatuoGPT-o1's verifier rewards (arXiv 2412.18925, sec. 3.3)
VERIFIER_ACCEPTS = 0.4  # their classifier accepts an answer when P(True) > 0.4 (ppo_trainer_medo1.py)
REFERENCE_ACCEPTS = 0.3  # the reference judge accepts an answer whose ROUGE-L F to the reference is at least this
# The verifier classifier's input (HuatuoGPT-o1's RL code): the final response, the reference, True/False asked.
VERIFIER_TEMPLATE = ("<Model Response>\n{response}\n</Model Response>\n\n<Reference Answer>\n{reference}\n"
                     "</Reference Answer>\n\nYour task is to evaluate the model response by comparing it to the "
                     "reference answer. If the model response is correct and aligns with the reference answer, output "
                     "\"True\" . If it is incorrect or fails to select the correct option (if options are provided), "
                     "output \"False\" . {eos}")


@dataclass(frozen=True)
class Answer:
    """One sampled answer, as every reward sees it."""
    text: str  # as generated (special tokens removed)
    ended: bool  # generation stopped on its own (end of turn), not on the token budget
    parsed: ParsedAnswer  # its reasoning, response and status in the trained style
    row: dict  # the training row's columns: answer and options (multiple-choice), reference (medical-o1)
    style: object  # the PromptStyle the SFT model was trained with


@dataclass(frozen=True)
class Reward:
    name: str
    weight: float
    score: Callable[[list[Answer]], list]  # a batch of answers -> one float (or None) each
    needs: tuple[str, ...] = ()  # row columns it reads: a dataset without them cannot use it
    describe: str = ""


REWARDS: dict[str, Reward] = {}  # every reward a run can name, by name


def reward(weight: float, needs: tuple[str, ...] = ()):
    """Register a per-answer reward function under its own name, with its default weight."""
    def register(function: Callable[[Answer], float | None]):
        REWARDS[function.__name__] = Reward(function.__name__, weight, lambda answers: [function(a) for a in answers],
                                            needs, (function.__doc__ or function.__name__).strip().splitlines()[0])
        return function
    return register


@reward(weight=0.5)
def format(answer: Answer) -> float:  # noqa: A001 - the reward's logged name
    """1 when the answer is complete in the trained style (its reasoning closed and its response ended)."""
    return 1.0 if answer.parsed.complete else 0.0


@reward(weight=1.0, needs=("answer", "options"))
def correct(answer: Answer) -> float:
    """1 when the one option the answer names is the right one; 0 for another, for none or for several."""
    letter = extract_choice(answer.text, answer.row["options"], answer.style)
    return 1.0 if letter is not None and letter == answer.row["answer"] else 0.0


@reward(weight=0.5)
def length(answer: Answer) -> float:
    """A penalty for an answer that loops (-1) or runs out of the token budget (-0.5); 0 for one that ended."""
    if answer.parsed.status == "looping":
        return LOOPING_PENALTY
    if not answer.ended and not answer.parsed.complete:
        return CUT_PENALTY
    return 0.0


# --- the verifier (open-ended rows) ---------------------------------------------------------------------------------

@dataclass
class Verifier:
    """Accepts or rejects well-formed answers against the reference: a classifier model, or the reference judge."""
    label: str
    accepts: Callable[[list[Answer]], list[bool]]


def huatuo_scores(answers: list[Answer], verifier: Verifier) -> list[float]:
    """1 verified, 0.1 well-formed but rejected, 0 broken form (the verifier sees well-formed answers only)."""
    formed = [i for i, a in enumerate(answers) if a.parsed.complete]
    scores = [BROKEN] * len(answers)
    for i, ok in zip(formed, verifier.accepts([answers[i] for i in formed]) if formed else []):
        scores[i] = VERIFIED if ok else WELL_FORMED_WRONG
    return scores


def reference_verifier(style) -> Verifier:
    """The reference judge (judging.ReferenceJudge: ROUGE-L F of the response to the reference) as the verifier."""
    judge = ReferenceJudge(style)

    def accepts(answers):
        verdicts = judge.score([Question("", a.row["reference"]) for a in answers], [a.text for a in answers])
        return [v.score is not None and v.score >= REFERENCE_ACCEPTS for v in verdicts]
    return Verifier(f"reference judge (ROUGE-L >= {REFERENCE_ACCEPTS})", accepts)


def classifier_verifier(model_path: str, device: str, batch_size: int = 8) -> Verifier:
    """A sequence classifier asked HuatuoGPT-o1's verifier question; it accepts when P(True) > VERIFIER_ACCEPTS."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(model_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
    except (OSError, ValueError) as e:
        raise UserError(f"VERIFIER_MODEL={model_path!r} cannot be loaded as a classifier ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]}). Fix: a local folder or Hub id of a 2-label sequence "
                        f"classifier (FreedomIntelligence/medical_o1_verifier_3B), or --VERIFIER=reference.") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id

    def accepts(answers):
        texts = [VERIFIER_TEMPLATE.format(response=a.parsed.response, reference=a.row["reference"],
                                          eos=tokenizer.eos_token or "") for a in answers]
        verdicts = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                              max_length=4000, add_special_tokens=False).to(device)
            with torch.inference_mode():
                probabilities = model(**batch).logits.float().softmax(-1)
            verdicts += [p > VERIFIER_ACCEPTS for p in probabilities[:, 1].tolist()]
        return verdicts
    return Verifier(f"classifier {model_path}", accepts)


def verifier_reward(verifier: Verifier, weight: float = 1.0) -> Reward:
    return Reward("verifier", weight, lambda answers: huatuo_scores(answers, verifier), ("reference",),
                  f"HuatuoGPT-o1's 1 / 0.1 / 0 with the {verifier.label}")


# --- what a run uses ---------------------------------------------------------------------------------------------

def choose(weights: dict, columns: set[str], verifier: Verifier | None) -> list[Reward]:
    """The rewards named in REWARDS ({name: weight}), checked against the data's columns before any model loads."""
    known = {**REWARDS, "verifier": None}
    if not isinstance(weights, dict) or not weights:
        raise UserError(f"REWARDS={weights!r}: give a mapping of reward names to weights, e.g. "
                        f"--REWARDS=\"{{'format': 0.5, 'correct': 1.0, 'length': 0.5}}\" (known: {', '.join(known)}).")
    chosen = []
    for name, weight in weights.items():
        if name not in known:
            raise UserError(f"REWARDS names {name!r}, which is no reward. Fix: one of {', '.join(known)}, or add "
                            f"yours in medreason/rl/rewards.py with @reward(weight=...).")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            raise UserError(f"REWARDS[{name!r}]={weight!r}: a weight is a number, e.g. 1.0.")
        spec = verifier_reward(verifier, weight) if name == "verifier" and verifier else known[name]
        if spec is None:
            raise UserError("REWARDS names 'verifier' but VERIFIER is 'none'. Fix: --VERIFIER=reference (ROUGE-L to "
                            "the reference) or --VERIFIER=model with VERIFIER_MODEL, or drop it from REWARDS.")
        missing = [c for c in spec.needs if c not in columns]
        if missing:
            fix = ("multiple-choice rows {question, options, answer}" if name == "correct" else
                   "medical-o1 rows with a reference answer (Question, Complex_CoT, Response)")
            raise UserError(f"the {name!r} reward reads the rows' {', '.join(missing)}, which this data does not "
                            f"have. Fix: {fix} as DATASET, or drop {name!r} from REWARDS.")
        chosen.append(Reward(spec.name, float(weight), spec.score, spec.needs, spec.describe))
    return chosen


class TrlReward:
    """One reward as trl's GRPOTrainer calls it: (prompts, completions, completion_ids, **row columns) -> floats.
    Its __name__ is the reward's name, which trl logs (rewards/<name>/mean)."""

    def __init__(self, spec: Reward, style, stop_ids: set[int]):
        self.spec, self.style, self.stop_ids = spec, style, set(stop_ids)
        self.__name__ = spec.name

    def answers(self, completions, completion_ids, columns: dict) -> list[Answer]:
        rows = [{k: v[i] for k, v in columns.items() if isinstance(v, list)} for i in range(len(completions))]
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        ended = [bool(ids) and ids[-1] in self.stop_ids for ids in completion_ids]
        return [Answer(t, e, parse_answer(t, self.style, e), r, self.style) for t, e, r in zip(texts, ended, rows)]

    def __call__(self, prompts, completions, completion_ids, **columns) -> list:
        return self.spec.score(self.answers(completions, completion_ids, columns))


def for_trl(rewards: list[Reward], style, stop_ids: set[int]) -> tuple[list[TrlReward], list[float]]:
    """(reward functions, weights) for GRPOTrainer(reward_funcs=...) and GRPOConfig(reward_weights=...)."""
    return [TrlReward(r, style, stop_ids) for r in rewards], [r.weight for r in rewards]


def describe(rewards: list[Reward]) -> list[str]:
    return [f"reward {r.name} (weight {r.weight:g}): {r.describe}" for r in rewards]


@dataclass
class RewardSummary:
    """Per-reward means over a run, from trl's log_history: first and last logged values, and the curve."""
    curves: dict = field(default_factory=dict)

    @classmethod
    def from_log(cls, log_history: list[dict], names: list[str]) -> "RewardSummary":
        keys = ["reward"] + [f"rewards/{n}/mean" for n in names]
        return cls({k: [(e["step"], e[k]) for e in log_history if k in e] for k in keys})
