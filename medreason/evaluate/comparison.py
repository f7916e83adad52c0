"""Did the fine-tune help? The same prompts through the base model (adapter disabled) and the tuned model.

Metrics, each reported as {"value", "ci95", "n"} with a 95% percentile-bootstrap interval over questions:
  rouge_l            ROUGE-L F of the response part against the reference (medical-o1 rows)
  format_compliance  share of answers whose reasoning closed and whose response ended, in the run's prompt style
                     (tags.parse_answer: <think>…</think><response>…</response> for the default style)
  perplexity         of the reference answers, counting only answer tokens (medical-o1 rows)
  accuracy           share of multiple-choice rows answered with the right letter (unextracted = wrong)
  extraction_rate    share of multiple-choice answers from which a letter could be extracted
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from medreason.answers.choices import extract_choice, mcq_question
from medreason.answers.generation import generate
from medreason.answers.prompts import PromptStyle, generation_prompt, to_example, tokenize_example
from medreason.answers.tags import closing_marker
from medreason.config.distributed import is_main, on_every_share
from medreason.config.errors import UserError, set_run_context
from medreason.data.layouts import EVALUATION, FIELDS, MCQ_FIELDS, detect, shown, text_problem
from medreason.data.safety_set import samples_per_kind
from medreason.evaluate import safety
from medreason.evaluate.metrics import compliance_flags, rouge_l_scores
from medreason.evaluate.report import write_report
from medreason.train.preflight import say_prompt_lengths
from medreason.train.sft import final_eval_loss


def detect_kind(records: list[dict], source: str) -> str:
    """'reasoning' for medical-o1 rows, 'mcq' for {question, options, answer} rows (layouts.detect, EVALUATION)."""
    return detect(records, source, EVALUATION).kind_name


def validate_mcq(records: list[dict], source: str) -> list[dict]:
    for n, row in enumerate(records, start=1):
        options, answer = row.get("options"), row.get("answer")
        if text_problem(row.get("question")):
            raise UserError(f"{source}: row {n}: 'question' {text_problem(row.get('question'))}. Fix the row or "
                            f"drop it.")
        if (not isinstance(options, dict) or not options or any(text_problem(v) for v in options.values())
                or not isinstance(answer, str) or answer not in options):
            raise UserError(f"{source}: row {n} needs 'options' as {{\"A\": text, …}} and 'answer' one of its "
                            f"letters (got answer {shown(answer)}). Fix the row or drop it.")
    return records


def bootstrap_ci(values: list[float], statistic=None, resamples: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile interval of the statistic (default: the mean) over resampled items."""
    statistic = statistic or (lambda xs: sum(xs) / len(xs))
    if not values:
        return [math.nan, math.nan]
    rng = random.Random(seed)
    stats = sorted(statistic([values[rng.randrange(len(values))] for _ in values]) for _ in range(resamples))
    return [stats[int(0.025 * (resamples - 1))], stats[int(math.ceil(0.975 * (resamples - 1)))]]


def mean_metric(values: list[float], **kwargs) -> dict:
    value = sum(values) / len(values) if values else math.nan
    return {"value": value, "ci95": bootstrap_ci(values, **kwargs), "n": len(values)}


def perplexity_metric(nll_and_tokens: list[tuple[float, int]], **kwargs) -> dict:
    """exp(total answer NLL / total answer tokens); rows are resampled whole for the interval."""
    def pooled(pairs):
        return math.exp(sum(n for n, _ in pairs) / max(sum(t for _, t in pairs), 1))
    return {"value": pooled(nll_and_tokens), "ci95": bootstrap_ci(nll_and_tokens, pooled, **kwargs),
            "n": len(nll_and_tokens)}


def _decoder_and_head(model):
    """The transformer body and the output layer, when logits are just head(last hidden state); else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    scaled = any(getattr(config, k, None) not in (None, 1, 1.0) for k in
                 ("final_logit_softcapping", "logit_scale", "logits_scaling"))  # Gemma-2, Cohere, Granite
    decoder, head = getattr(base, "get_decoder", lambda: None)(), base.get_output_embeddings()
    return (decoder, head) if decoder is not None and head is not None and not scaled else None


def answer_nll(model, tokenizer, rows: list[dict], style: PromptStyle, batch_size: int) -> list[tuple[float, int]]:
    """(summed NLL, token count) of each reference answer given its prompt; prompt tokens do not count.

    Only the answer positions go through the output layer: full-vocabulary logits for a whole batch would be
    batch x length x vocab floats (8 Llama-3 rows of 1,200 tokens: 4.9 GB in fp32), most of them for the prompt."""
    import torch
    import torch.nn.functional as F
    examples = [tokenize_example(tokenizer, to_example(row, style, tokenizer)) for row in rows]
    parts, results = _decoder_and_head(model), []
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=model.device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=model.device)
        with torch.inference_mode():
            if parts:
                states = parts[0](input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
                logits_at = lambda i, span: parts[1](states[i, span])  # noqa: E731
            else:
                logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
                logits_at = lambda i, span: logits[i, span]  # noqa: E731
            for i, (ids, n_prompt) in enumerate(batch):
                # The state at position t predicts token t + 1: answer tokens n_prompt.. come from n_prompt - 1..
                span = slice(n_prompt - 1, len(ids) - 1)
                targets = torch.tensor(ids[n_prompt:], device=model.device)
                nll = F.cross_entropy(logits_at(i, span).float(), targets, reduction="sum")
                results.append((float(nll), len(ids) - n_prompt))
    return results


@dataclass
class ModelAnswers:
    answers: list[str]
    metrics: dict = field(default_factory=dict)
    ended: list[bool] | None = None  # per answer: stopped on its own, not on the token budget


def questions_for(rows: list[dict], kind: str) -> list[str]:
    return [row["Question"] if kind == "reasoning" else mcq_question(row["question"], row["options"]) for row in rows]


def score(model, tokenizer, rows: list[dict], kind: str, style: PromptStyle, max_new_tokens: int, batch_size: int,
          desc: str, seed: int = 0, engine: str = "auto") -> ModelAnswers:
    """Generate answers to the rows (greedy, with the generation engine) and compute the metrics of one model."""
    prompts = [generation_prompt(tokenizer, q, style) for q in questions_for(rows, kind)]
    generated = on_every_share(prompts, lambda part: generate(  # each process answers its share (one: all)
        model, tokenizer, part, max_new_tokens, batch_size, desc=desc, engine=engine, stop_text=closing_marker(style),
        progress=is_main()))
    answers, ended = [g.text.strip() for g in generated], [g.ended for g in generated]
    result = ModelAnswers(answers, ended=ended)
    result.metrics["format_compliance"] = mean_metric(compliance_flags(answers, style, ended), seed=seed)
    if kind == "reasoning":
        rouge = rouge_l_scores(answers, [row["Response"] for row in rows], style, ended)
        result.metrics["rouge_l"] = mean_metric(rouge, seed=seed)
        nll = on_every_share(rows, lambda part: answer_nll(model, tokenizer, part, style, batch_size))
        result.metrics["perplexity"] = perplexity_metric(nll, seed=seed)
    else:
        letters = [extract_choice(a, row["options"], style) for a, row in zip(answers, rows)]
        result.metrics["accuracy"] = mean_metric(
            [float(letter == row["answer"]) for letter, row in zip(letters, rows)], seed=seed)
        result.metrics["extraction_rate"] = mean_metric([float(x is not None) for x in letters], seed=seed)
    return result


def compare(model, tokenizer, rows: list[dict], kind: str, style: PromptStyle, max_new_tokens: int,
            batch_size: int, seed: int = 0, include_base: bool = True, engine: str = "auto") -> dict[str, ModelAnswers]:
    """The base model (the same weights with the adapter disabled: nothing loaded twice) and the tuned model."""
    say_prompt_lengths(model, tokenizer, [generation_prompt(tokenizer, q, style) for q in questions_for(rows, kind)],
                       "evaluation")
    results = {}
    if include_base:
        with model.disable_adapter():
            results["base"] = score(model, tokenizer, rows, kind, style, max_new_tokens, batch_size,
                                    "base model answering", seed, engine)
    results["tuned"] = score(model, tokenizer, rows, kind, style, max_new_tokens, batch_size,
                             "tuned model answering", seed, engine)
    return results


def evaluate_held_out(model, tokenizer, rows: list[dict], style: PromptStyle, max_new_tokens: int, batch_size: int,
                      seed: int, out_dir, meta: dict, log_history: list[dict],
                      engine: str = "auto", safety_per_kind: int = 0) -> dict[str, ModelAnswers]:
    """The trainer's last step: base vs tuned on held-out rows, and on safety_per_kind unsafe asks and as many safe
    controls of the held-out safety set (safety.py), reported to out_dir (report.md, charts...)."""
    if not rows:
        return {}
    results = compare(model, tokenizer, rows, "reasoning", style, max_new_tokens, batch_size, seed=seed,
                      engine=engine)
    if safety_per_kind:
        asked = safety.evaluate(model, tokenizer, style, max_new_tokens, batch_size, safety_per_kind, engine=engine)
        safety.add_to(results, asked)
        if is_main():
            safety.write_samples(out_dir / "safety_samples.jsonl", asked)
    if is_main():
        write_report(out_dir, results, rows, "reasoning", meta, log_history)
    return results


def evaluate_run(trainer, model, tokenizer, backend: str, val_rows, style: PromptStyle, cfg, out):
    """A training run's last step: its eval loss and log, then base vs tuned on EVAL_SAMPLES held-out questions.
    Returns (comparison, eval loss, the rows evaluated)."""
    import json

    set_run_context(step="6. evaluate (the adapter is saved)")
    eval_loss = final_eval_loss(trainer) if val_rows else None  # every process takes part
    if is_main():
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    if backend == "unsloth":
        from unsloth import FastLanguageModel
        FastLanguageModel.for_inference(model)
    sample = list(val_rows.select(range(min(cfg.EVAL_SAMPLES, len(val_rows))))) if val_rows else []
    safety_per_kind = samples_per_kind(getattr(cfg, "SAFETY_EVAL_SAMPLES", None), cfg.EVAL_SAMPLES)
    comparison = evaluate_held_out(model, tokenizer, sample, style, cfg.MAX_NEW_TOKENS, cfg.EVAL_BATCH_SIZE,
                                   cfg.SEED, out / "evaluation",
                                   {"data": cfg.DATASET, "max_new_tokens": cfg.MAX_NEW_TOKENS},
                                   trainer.state.log_history, safety_per_kind=safety_per_kind)
    return comparison, eval_loss, sample
