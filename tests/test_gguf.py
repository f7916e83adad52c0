"""GGUF export for llama.cpp / Ollama (medreason/model/gguf.py): the Ollama template, the preflight, and (e2e) the embedded
model with a trained adapter merged, converted and quantized by llama.cpp's own tools, answering in llama-cpp-python
as transformers answers from the merged model."""
import importlib.util
import json
import time

import pytest

from medreason.model import exports, gguf
from medreason.config.errors import UserError
from medreason.answers.prompts import get_style, prompt_messages

STYLE = get_style("think_response")
# Greedy tokens that must agree between llama.cpp (q8_0 GGUF) and transformers (the merged fp32 model): the
# quantization may make them part ways later, not in the opening. Measured (AMD EPYC, AVX-512 BF16): the first 24 of
# 35 agree, then "a measure of" vs "a form of"; the test prints the count each run.
SAME_TOKENS = 16
ANSWER_TOKENS = 160  # budget of the compared answers (the trained answers are ~60-90 tokens)
needs_llama_cpp = pytest.mark.skipif(gguf.missing_tools() is not None, reason=str(gguf.missing_tools()))


def test_ollama_template_renders_the_tokenizers_prompt(tokenizer):
    """The Go template derived from the embedded model's chat template gives the same prompt string, for the trained
    single question and for a conversation with an earlier exchange."""
    template = gguf.ollama_template(gguf.chat_pieces(tokenizer))
    question = prompt_messages("Why do ACE inhibitors cause a dry cough?", STYLE)
    conversation = question + [{"role": "assistant", "content": "<think>\nbradykinin\n</think>\n<response>\nIt "
                                                                "builds up.\n</response>"},
                               {"role": "user", "content": "And angioedema?"}]
    for messages in (question, conversation):
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert gguf.render_ollama_template(template, messages) == expected
    assert gguf.check_template(template, tokenizer, question).endswith("<|im_start|>assistant\n")
    # The template is Ollama's syntax, not a copy of the Jinja one
    assert template.startswith('{{ range .Messages }}{{ if eq .Role "system" }}') and "{%" not in template


LLAMA3_LIKE = ("{{- bos_token }}{%- for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] | trim }}<|eot_id|>{%- endfor %}{%- if add_generation_prompt %}"
               "<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}")


def test_a_template_that_writes_bos_leaves_it_to_llama_cpp_where_tokenizing_adds_it(tokenizer):
    """A Llama-3-like template writes the BOS token itself. Where tokenizing adds a BOS anyway (llama.cpp does for
    Ollama when the vocabulary says so), Ollama's template must not write it too; elsewhere it keeps it."""
    import copy
    llama3 = copy.deepcopy(tokenizer)
    llama3.chat_template = LLAMA3_LIKE
    messages = prompt_messages("Chest pain?", STYLE)
    expected = llama3.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pieces = gguf.chat_pieces(llama3, adds_bos=True)
    assert pieces.start == llama3.bos_token and pieces.prefix["user"] == "<|start_header_id|>user<|end_header_id|>\n\n"
    template = gguf.ollama_template(pieces)
    assert llama3.bos_token not in template
    assert llama3.bos_token + gguf.check_template(template, llama3, messages, pieces.start) == expected
    kept = gguf.chat_pieces(llama3, adds_bos=False)  # SmolLM2's tokenizer adds none: the template writes it all
    assert kept.start == "" and gguf.check_template(gguf.ollama_template(kept), llama3, messages) == expected


def test_template_renderer_refuses_what_it_does_not_implement():
    with pytest.raises(ValueError, match="unsupported template action"):
        gguf.render_ollama_template("{{ .System }}{{ .Prompt }}", [])
    with pytest.raises(ValueError, match="unsupported"):
        gguf.render_ollama_template('{{- range .Messages }}{{ if eq .Role "user" }}{{ .Content }}'
                                    '{{ else }}x{{ end }}{{ end }}', [{"role": "user", "content": "q"}])
    # Go's trim markers: {{- eats the whitespace before, -}} the whitespace after
    assert gguf.render_ollama_template("a \n{{- range .Messages }} [{{ .Role }}] {{- end }}\n b",
                                       [{"role": "user", "content": ""}]) == "a [user]\n b"


def test_a_template_that_writes_messages_by_position_is_refused(tokenizer):
    class Odd:  # a template that writes the first user message differently from later ones
        bos_token = None

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            out = "".join(f"[{m['role']}{'*' if i == 1 else ''}]{m['content']}" for i, m in enumerate(messages))
            return out + ("[assistant]" if add_generation_prompt else "")
    with pytest.raises(UserError, match="differently by position.*Fix"):
        gguf.chat_pieces(Odd())


def test_modelfile_carries_the_trained_prompt_stops_and_inference_sampling(tokenizer, tmp_path):
    info = {"prompt_style": "think_response", "system_prompt": "You are a terse medical tutor.",
            "max_new_tokens": 512}
    (tmp_path / "m-q8_0.gguf").write_bytes(b"")
    path = gguf.write_modelfile(tmp_path, tmp_path / "m-q8_0.gguf", tokenizer, info, None, 512, 8192)
    text = path.read_text()
    assert text.splitlines()[1] == "FROM ./m-q8_0.gguf"
    assert 'SYSTEM """You are a terse medical tutor."""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    # inference's defaults: greedy, no repetition penalty (Ollama's own default is 1.1), the trained budget
    for line in ("PARAMETER temperature 0", "PARAMETER repeat_penalty 1.0", "PARAMETER num_predict 512",
                 f"PARAMETER num_ctx {gguf.OLLAMA_CONTEXT}"):
        assert line in text.splitlines()
    template = text.split('TEMPLATE """')[1].split('"""')[0]
    messages = prompt_messages("Q?", get_style("think_response").with_system_prompt(info["system_prompt"]))
    assert gguf.render_ollama_template(template, messages) == tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)


def test_gguf_preflight(monkeypatch, tmp_path):
    assert gguf.parse_methods(" Q4_K_M, q8_0 ,q4_k_m") == ("q4_k_m", "q8_0")
    with pytest.raises(UserError, match="SAVE_GGUF='q4_k_x'.*Fix"):
        exports.check_exports(False, "q4_k_x", "transformers", "any")
    monkeypatch.setenv(gguf.CONVERTER_DIR_VARIABLE, str(tmp_path))  # a folder with no converter in it
    with pytest.raises(UserError, match="SAVE_GGUF='q8_0'.*(not installed|converter is not at).*Fix: bash "
                                        "scripts/setup.sh"):
        exports.check_exports(False, "q8_0", "transformers", "any")
    with pytest.raises(UserError, match="GGUF_EXPORTER='ollama'"):
        exports.check_exports(False, "q8_0", "transformers", "any", exporter="ollama")


@needs_llama_cpp
def test_llama_cpp_exporter_is_planned_on_both_backends(capsys):
    for backend in ("transformers", "unsloth"):
        plan = exports.check_exports(False, "q4_k_m,q8_0", backend, "any")
        assert plan == exports.ExportPlan(False, ("q4_k_m", "q8_0"), "llama.cpp")
    assert "llama.cpp (llama-cpp-python, offline)" in capsys.readouterr().out


def test_upload_folder_carries_the_gguf_files_and_the_card_lists_them(tmp_path):
    from medreason.publish import hub
    run = tmp_path / "run"
    (run / "gguf").mkdir(parents=True)
    (run / "gguf" / "run-q4_k_m.gguf").write_bytes(b"G" * 2_500_000)
    (run / "gguf" / "Modelfile").write_text("FROM ./run-q4_k_m.gguf\n")
    (run / "gguf" / "training_info.json").write_text("{}")
    folder = tmp_path / "upload"
    folder.mkdir()
    section = hub.add_gguf_files(run, folder, "me/Med-GGUF")
    assert sorted(p.name for p in (folder / "gguf").iterdir()) == ["Modelfile", "run-q4_k_m.gguf",
                                                                   "training_info.json"]
    assert "| `gguf/run-q4_k_m.gguf` | 2.5 MB |" in section
    assert "hf download me/Med-GGUF --include 'gguf/*' --local-dir med-gguf" in section
    assert "ollama create med-gguf -f Modelfile" in section
    (run / "gguf" / "run-q4_k_m.gguf").unlink()  # a run without GGUF files: no section, nothing added
    assert hub.add_gguf_files(run, tmp_path / "none", "me/med") == ""


def test_bad_gguf_path_is_one_line_before_any_model_loads(tmp_path):
    import inference
    with pytest.raises(UserError, match=r"--gguf .*missing\.gguf: no such \.gguf file\. Fix"):
        inference.main(["--gguf", str(tmp_path / "missing.gguf"), "--question", "q"])
    with pytest.raises(SystemExit):  # argparse: one of --adapter / --gguf, not both
        inference.parse_args(["--gguf", "a.gguf", "--adapter", "b"])


# --- end to end: the embedded model, a trained adapter, llama.cpp's converter and quantizer, llama-cpp-python ---------

def _short_answer(row) -> tuple[str, str]:
    first = lambda text: text.strip().split(". ")[0].rstrip(".") + "."  # noqa: E731
    return first(row["Complex_CoT"]), first(row["Response"])


@pytest.fixture(scope="module")
def embedded_adapter(tmp_path_factory, embedded_dir, demo_rows):
    """A LoRA adapter on the embedded SmolLM2-135M, trained (loss on the answer only) to answer in the
    <think>/<response> layout on demo rows; the last demo row is held out. Saved by the project's save_adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from medreason.model.for_training import load_tokenizer, save_adapter
    from medreason.answers.prompts import generation_prompt
    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(embedded_dir))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                      lora_dropout=0.0))
    batch = []
    for row in demo_rows[:6]:
        answer = STYLE.answer(*_short_answer(row))
        prompt = tokenizer(generation_prompt(tokenizer, row["Question"], STYLE), add_special_tokens=False)["input_ids"]
        target = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        batch.append((torch.tensor([prompt + target]), torch.tensor([[-100] * len(prompt) + target])))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    start = time.time()
    for step in range(24):
        ids, labels = batch[step % len(batch)]
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print(f"[test] adapter trained in {time.time() - start:.0f} s")
    import types

    import medical_fine_tuning
    from medreason.config.run_plan import Plan
    from medreason.config.settings import collect
    from medreason.train import sft
    cfg = types.SimpleNamespace(**{  # the script's constants, then what this loop did
        **collect(vars(medical_fine_tuning)), "MODEL_NAME": "embedded", "PROMPT_STYLE": STYLE.name,
        "MAX_NEW_TOKENS": ANSWER_TOKENS, "BATCH_SIZE": 1, "GRAD_ACCUM": 1, "MAX_STEPS": 24, "LEARNING_RATE": 2e-3,
        "LR_SCHEDULER": "constant", "WARMUP_STEPS": 0, "WEIGHT_DECAY": 0.0, "LORA_R": 8, "LORA_ALPHA": 16,
        "LORA_DROPOUT": 0.0, "TARGET_MODULES": ["q_proj", "v_proj", "o_proj"], "SEED": 0})
    info = sft.run_info(cfg, Plan("transformers", "cpu", "fp32", False, "adamw_torch"), STYLE)
    return save_adapter(model, tokenizer, tmp_path_factory.mktemp("embedded-run") / "adapter", info,
                        finished_at_step=24)


@pytest.fixture(scope="module")
def exported(embedded_adapter, embedded_dir):
    """The export as the training script runs it (transformers backend): merge, convert, quantize, Modelfile."""
    out = embedded_adapter.parent
    plan = exports.ExportPlan(False, ("q8_0", "q4_k_m"))
    start = time.time()
    assert exports.run_exports(plan, None, None, "transformers", str(embedded_dir), embedded_adapter, out)
    print(f"[test] GGUF export (merge, convert, q8_0 + q4_k_m) in {time.time() - start:.0f} s")
    return out / "gguf"


@pytest.mark.e2e
@needs_llama_cpp
def test_export_writes_quantized_files_modelfile_and_prompt(exported, embedded_adapter):
    from gguf import GGUFReader  # llama.cpp's gguf-py, as installed
    name = exported.parent.name
    q8, q4 = exported / f"{name}-q8_0.gguf", exported / f"{name}-q4_k_m.gguf"
    assert sorted(p.name for p in exported.iterdir()) == sorted([q8.name, q4.name, "Modelfile",
                                                                 "training_info.json"])
    assert not (exported.parent / "gguf-merged.tmp").exists()  # the temporary merged model is gone
    types = {}
    for path in (q8, q4):
        reader = GGUFReader(path)
        field = reader.fields["general.file_type"]
        types[path] = int(field.parts[field.data[0]][0])
        template = reader.fields["tokenizer.chat_template"]
        assert "<|im_start|>" in bytes(template.parts[template.data[0]]).decode()
    import llama_cpp
    assert types == {q8: llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, q4: llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    assert q4.stat().st_size < q8.stat().st_size < 200e6
    assert json.loads((exported / "training_info.json").read_text()) == json.loads(
        (embedded_adapter / "training_info.json").read_text())
    assert (exported / "Modelfile").read_text().splitlines()[1] == f"FROM ./{q8.name}"


@pytest.mark.e2e
@needs_llama_cpp
def test_gguf_answers_as_the_merged_model(q8_loaded, embedded_adapter, embedded_dir, demo_rows, tmp_path):
    """Held-out question, greedy: llama.cpp on the q8_0 GGUF writes the same first SAME_TOKENS tokens as transformers
    on the merged fp32 model, through the same prompt, and closes its tags."""
    from medreason.answers import answering
    from medreason.model import for_inference
    from medreason.answers.generation import generate
    from medreason.answers.prompts import generation_prompt
    held_out, loaded = demo_rows[-1]["Question"], q8_loaded
    merged = for_inference.load(str(exports.merge_adapter(str(embedded_dir), embedded_adapter, tmp_path / "merged")))
    assert loaded.kind == "gguf" and loaded.style == for_inference.trained_style(
        json.loads((embedded_adapter / "training_info.json").read_text()))
    prompt = generation_prompt(loaded.tokenizer, held_out, loaded.style)
    assert prompt == generation_prompt(merged.tokenizer, held_out, loaded.style)  # the GGUF carries the template
    assert loaded.model.llm.tokenize(prompt.encode(), add_bos=False, special=True) == \
        merged.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    hf, = generate(merged.model, merged.tokenizer, [prompt], ANSWER_TOKENS, 1, engine="batched", progress=False)
    cpp, = generate(loaded.model, loaded.tokenizer, [prompt], ANSWER_TOKENS, 1, progress=False)
    hf_ids = merged.tokenizer(hf.text, add_special_tokens=False)["input_ids"]
    cpp_ids = merged.tokenizer(cpp.text, add_special_tokens=False)["input_ids"]
    agree = next((k for k, (a, b) in enumerate(zip(hf_ids, cpp_ids)) if a != b), min(len(hf_ids), len(cpp_ids)))
    print(f"[test] greedy tokens in common: {agree} of {len(hf_ids)} (transformers) / {len(cpp_ids)} (llama.cpp)")
    assert agree >= SAME_TOKENS and len(hf_ids) >= SAME_TOKENS, (hf.text, cpp.text)
    answer, = answering.answer_batch(loaded.model, loaded.tokenizer, [held_out], loaded.style, ANSWER_TOKENS)
    assert answer.status == "complete", answer.text
    assert answer.text.startswith("<think>") and answer.text.rstrip().endswith("</response>")


@pytest.fixture(scope="module")
def q8_loaded(exported):
    return gguf.load_gguf(str(exported / f"{exported.parent.name}-q8_0.gguf"))


@pytest.mark.e2e
@needs_llama_cpp
def test_inference_script_answers_from_the_gguf(exported, demo_rows, capsys):
    """inference.py --gguf streams the answer with the status line, from the q4_k_m file too."""
    import inference
    path = exported / f"{exported.parent.name}-q4_k_m.gguf"
    status = inference.main(["--gguf", str(path), "--question", demo_rows[-1]["Question"], "--show-thinking"])
    printed = capsys.readouterr().out
    assert printed.lstrip().startswith("<think>") and f"[status: {'complete' if status == 0 else ''}" in printed


@pytest.mark.e2e
@needs_llama_cpp
def test_chat_page_answers_from_the_gguf(q8_loaded, demo_rows):
    """The page's handler streams the GGUF's answer into the thinking panel and the answer, as for an adapter."""
    from medreason.answers import answering
    from medreason.serve import webchat
    from medreason.answers.generation import GREEDY
    question = demo_rows[-1]["Question"]
    expected, = answering.answer_batch(q8_loaded.model, q8_loaded.tokenizer, [question], q8_loaded.style,
                                       ANSWER_TOKENS)
    budget = webchat.fit_budget(q8_loaded, question, ANSWER_TOKENS, 2, 64)
    *streamed, final = list(webchat.answer_messages(q8_loaded, question, budget, GREEDY))
    assert len(streamed) > 3  # it arrived in pieces
    assert final[0].metadata["title"] == "Thinking" and final[0].content == expected.thinking
    assert final[-1].content.startswith(expected.response)
    assert "a GGUF answered by llama.cpp" in webchat.banner(q8_loaded, "run-q8_0.gguf")
