"""The generation engine: continuous batching gives the batched path's exact greedy tokens, sampling repeats under a
seed, answers stop at their closing tag, looping answers are named, the run's budget is the one evaluated."""
import json

import pytest

from conftest import PARROT_ANSWERS
from medreason.answers import generation
from medreason.model import for_inference
from medreason.config.errors import UserError
from medreason.answers.generation import GREEDY, Sampling, choose_engine, generate
from medreason.answers.prompts import generation_prompt, get_style
from medreason.answers.tags import is_looping, parse_answer

STYLE = get_style("think_response")
COMPLETE_Q, THINK_ONLY_Q = PARROT_ANSWERS


@pytest.fixture(scope="module")
def tuned(tiny_model_dir, tokenizer):
    """The tiny Llama inside a peft LoRA whose weights are random (not the zero start), so the adapter visibly
    changes what the model writes."""
    import types
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"],
                                      init_lora_weights=False))
    return types.SimpleNamespace(model=model.eval(), tokenizer=tokenizer)


def ragged_prompts(tokenizer, count=7):
    """Chat prompts of very different lengths (2 to ~60 words of question)."""
    return [generation_prompt(tokenizer, "Why " + "and then " * (3 * i) + f"case {i}?", STYLE) for i in range(count)]


@pytest.mark.parametrize("budget", [1, 9, 40])
def test_continuous_batching_gives_the_batched_paths_greedy_tokens(tuned, budget):
    prompts = ragged_prompts(tuned.tokenizer)
    batched = generate(tuned.model, tuned.tokenizer, prompts, budget, batch_size=3, engine="batched", progress=False)
    continuous = generate(tuned.model, tuned.tokenizer, prompts, budget, batch_size=3, engine="continuous",
                          progress=False)
    assert [g.tokens for g in continuous] == [budget] * len(prompts) or budget == 40  # a random model may end early
    assert continuous == batched


def test_the_adapter_is_applied_and_disabled_under_continuous_batching(tuned):
    prompts = ragged_prompts(tuned.tokenizer, 3)
    with_adapter = generate(tuned.model, tuned.tokenizer, prompts, 12, 3, engine="continuous", progress=False)
    with tuned.model.disable_adapter():
        base = generate(tuned.model, tuned.tokenizer, prompts, 12, 3, engine="continuous", progress=False)
        base_batched = generate(tuned.model, tuned.tokenizer, prompts, 12, 3, engine="batched", progress=False)
    assert base == base_batched and base != with_adapter


def test_sampling_repeats_under_a_seed_and_varies_without_one(tuned):
    prompts = ragged_prompts(tuned.tokenizer, 4)
    sampling = Sampling(do_sample=True, temperature=1.0, top_p=1.0)
    runs = [generate(tuned.model, tuned.tokenizer, prompts, 16, 4, sampling=sampling, engine="continuous",
                     progress=False, seed=seed) for seed in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    greedy = generate(tuned.model, tuned.tokenizer, prompts, 16, 4, engine="continuous", progress=False)
    assert runs[0] != greedy


@pytest.mark.parametrize("engine", ["batched", "continuous"])
def test_an_answer_stops_once_its_response_closes(parrot_model_dir, engine):
    """Asked past what it learned (a response opened after its reasoning), the parrot closes </response> and then
    writes more; the engine stops right after the closing tag."""
    parrot = for_inference.load(str(parrot_model_dir))
    prompt = generation_prompt(parrot.tokenizer, THINK_ONLY_Q, STYLE) + PARROT_ANSWERS[THINK_ONLY_Q] + "\n<response>\n"
    free, = generate(parrot.model, parrot.tokenizer, [prompt], 16, 1, engine=engine, progress=False)
    stopped, = generate(parrot.model, parrot.tokenizer, [prompt], 16, 1, engine=engine, progress=False,
                        stop_text="</response>")
    closed = free.text.index("</response>") + len("</response>")
    assert free.text[closed:].strip(), "the parrot should write on after </response> when not stopped"
    assert stopped.text == free.text[:closed] and stopped.ended and stopped.tokens < free.tokens
    whole, = generate(parrot.model, parrot.tokenizer, [generation_prompt(parrot.tokenizer, COMPLETE_Q, STYLE)], 64, 1,
                      engine=engine, progress=False, stop_text="</response>")
    assert whole.text == PARROT_ANSWERS[COMPLETE_Q] and parse_answer(whole.text).complete


def test_the_engine_choice_and_its_reasons(tuned):
    prompts = ragged_prompts(tuned.tokenizer, 2)
    assert choose_engine("auto", tuned.model, tuned.tokenizer, prompts, GREEDY)[0] == "continuous"
    engine, why = choose_engine("auto", tuned.model, tuned.tokenizer, prompts, Sampling(repetition_penalty=1.1))
    assert engine == "batched" and "repetition penalty" in why
    assert choose_engine("auto", tuned.model, tuned.tokenizer, prompts, GREEDY, streamer=object())[0] == "batched"
    with pytest.raises(UserError, match="continuous batching was asked for, but .*repetition penalty. Fix"):
        choose_engine("continuous", tuned.model, tuned.tokenizer, prompts, Sampling(repetition_penalty=1.1))
    with pytest.raises(UserError, match="engine 'fast'"):
        choose_engine("fast", tuned.model, tuned.tokenizer, prompts, GREEDY)


def test_on_a_gpu_both_engines_are_timed_and_the_faster_kept(tuned, monkeypatch):
    """A GPU decision, checked by pretending to be on one (on_gpu=True): both engines really run, the faster wins."""
    prompts = ragged_prompts(tuned.tokenizer, 3)
    runs = []
    for name in ("_batched", "_continuous"):
        real = getattr(generation, name)
        monkeypatch.setattr(generation, name, lambda *a, _real=real, _name=name: runs.append(_name) or _real(*a))
    generation._MEASURED.clear()
    engine, why = choose_engine("auto", tuned.model, tuned.tokenizer, prompts, GREEDY, on_gpu=True)
    assert runs.count("_batched") == runs.count("_continuous") == 2  # a warm-up and a timed run each
    assert "measured on 3 prompts" in why
    seconds = {name: float(why.split(f"{name} ")[1].split(" s")[0]) for name in ("continuous", "batched")}
    assert engine == min(seconds, key=seconds.get)
    assert choose_engine("auto", tuned.model, tuned.tokenizer, prompts, GREEDY, on_gpu=True) == (engine, why)
    generation._MEASURED.clear()


@pytest.mark.parametrize("text, looping", [
    ("<think>The patient is short of breath. " + "We should check the oxygen level now. " * 5, True),
    ("<think>" + "ab" * 200, True),
    ("<think>First the history. Then the examination, which shows a murmur. Then an echo to confirm it. "
     "Then treatment with a diuretic and a beta blocker, reviewed in two weeks, with", False),
])
def test_looping_answers_are_named(text, looping):
    assert is_looping(text) == looping
    assert parse_answer(text, STYLE, ended=False).status == ("looping" if looping else "think_unclosed")
    assert parse_answer(text, STYLE, ended=True).status == "think_unclosed"  # stopped on its own: not a loop


def test_evaluate_uses_the_budget_the_run_trained_for(tiny_adapter, tmp_path):
    """training_info.json records MAX_NEW_TOKENS; evaluate.py answers within it unless --max-new-tokens is given."""
    import subprocess
    import sys
    from conftest import ROOT
    adapter = tmp_path / "run" / "adapter"
    adapter.parent.mkdir()
    import shutil
    shutil.copytree(tiny_adapter, adapter)
    info = json.loads((adapter / "training_info.json").read_text())
    (adapter / "training_info.json").write_text(json.dumps({**info, "max_new_tokens": 7}))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"Question": f"Question {i}?", "Complex_CoT": "c", "Response": "r"})
                              for i in range(2)) + "\n")
    result = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--adapter", str(adapter), "--data",
                             str(rows), "--no-base"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "[eval] 7 new tokens per answer (the training run's MAX_NEW_TOKENS" in result.stdout
    assert "engine: continuous" in result.stdout
    report = json.loads((tmp_path / "run" / "evaluation" / "results.json").read_text())
    assert report["max_new_tokens"] == 7 and set(report["tuned"]) >= {"rouge_l", "format_compliance", "perplexity"}
