"""The chat page (app.py, medreason/serve/webchat.py): its streaming handler on a trained adapter, then the real page in
headless Chromium (Debian's `chromium`, driven by Playwright without a browser download)."""
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT

# A tiny Llama whose LoRA adapter is trained until it repeats these answers: a real adapter with known output.
PARROT = {
    "Which drug class causes a dry cough?":
        "<think>\nbradykinin builds up\n</think>\n<response>\nACE inhibitors\n</response>",
    "Say hello.": "Hello there.",  # no tags at all: no reasoning panel, and not shown as a whole answer
}
COUGH, HELLO = PARROT
SYSTEM_PROMPT = "You are the chat page test's parrot."  # training_info.json's prompt: the page must ask with it
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "docs" / "app_screenshot.png"


@pytest.fixture(scope="module")
def parrot_adapter(tmp_path_factory, tokenizer):
    """An adapter saved by the project's save_adapter, with the run record the trainer writes (sft.run_info: its
    base, prompt and the settings this loop trained with)."""
    import types
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    import medical_fine_tuning
    from medreason.config.run_plan import Plan
    from medreason.config.settings import collect
    from medreason.model.for_training import save_adapter
    from medreason.answers.prompts import generation_prompt, get_style
    from medreason.train import sft
    torch.manual_seed(0)
    # initializer_range 0.2 (not 0.02): embeddings large enough for the LoRA layers to make confident predictions
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.2, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("parrot-adapter")
    LlamaForCausalLM(config).save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    style = get_style("think_response").with_system_prompt(SYSTEM_PROMPT)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(folder / "base"),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    batch = []
    for question, answer in PARROT.items():
        prompt = tokenizer(generation_prompt(tokenizer, question, style), add_special_tokens=False)["input_ids"]
        target = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        batch.append((torch.tensor([prompt + target]), torch.tensor([[-100] * len(prompt) + target])))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(120):
        ids, labels = batch[step % len(batch)]
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    cfg = types.SimpleNamespace(**{  # the script's constants, then what this loop did
        **collect(vars(medical_fine_tuning)), "MODEL_NAME": str(folder / "base"), "PROMPT_STYLE": style.name,
        "MAX_SEQ_LENGTH": 512, "BATCH_SIZE": 1, "GRAD_ACCUM": 1, "MAX_STEPS": 120,
        "LEARNING_RATE": 1e-2, "LR_SCHEDULER": "constant", "WARMUP_STEPS": 0, "WEIGHT_DECAY": 0.0, "LORA_R": 16,
        "LORA_ALPHA": 32, "LORA_DROPOUT": 0.0, "TARGET_MODULES": "all-linear", "SEED": 0})
    info = sft.run_info(cfg, Plan("transformers", "cpu", "fp32", False, "adamw_torch"), style)
    return save_adapter(model, tokenizer, folder / "adapter", info, finished_at_step=120)


@pytest.fixture(scope="module")
def loaded(parrot_adapter):
    from medreason.model import for_inference
    return for_inference.load(str(parrot_adapter))


def ask(loaded, question, max_new_tokens=64, max_continuations=2):
    from medreason.serve import webchat
    respond = webchat.make_responder(loaded, max_continuations, continuation_tokens=32)
    return list(respond(question, [], max_new_tokens, False, 0.6, 0.95, 1.0))


def thinking(messages):
    return [m for m in messages if m.metadata.get("title", "").startswith("Thinking")]


def answers(messages):
    return [m for m in messages if not m.metadata.get("title")]


def test_the_answer_streams_with_its_reasoning_in_a_folding_message(loaded):
    from medreason.answers.prompts import DISCLAIMER
    assert loaded.style.system_prompt == SYSTEM_PROMPT
    updates = ask(loaded, COUGH)
    assert len(updates) > 3
    pending = [u for u in updates if thinking(u) and thinking(u)[0].metadata["status"] == "pending"]
    assert pending and all(not answers(u) for u in pending)  # reasoning streams first, open, the answer after
    for update in updates:  # no tag, whole or cut, ever reaches the page
        assert all("<" not in m.content and ">" not in m.content for m in update)
    final = updates[-1]
    panel, = thinking(final)
    assert panel.content == "bradykinin builds up" and panel.metadata["title"] == "Thinking"
    assert panel.metadata["status"] == "done" and panel.metadata["duration"] >= 0
    answer, = answers(final)
    assert answer.content.startswith("ACE inhibitors") and answer.content.endswith(f"*{DISCLAIMER}*")
    assert "Incomplete" not in answer.content


def test_an_answer_cut_off_by_the_budget_is_shown_as_incomplete(loaded):
    final = ask(loaded, COUGH, max_new_tokens=4, max_continuations=0)[-1]
    panel, = thinking(final)
    assert panel.metadata["title"] == "Thinking (did not finish)" and panel.metadata["status"] == "done"
    answer, = answers(final)
    assert answer.content.startswith("**Incomplete answer** (`think_unclosed`)") and "Max new tokens" in answer.content
    assert "ACE inhibitors" not in answer.content


def test_continuations_repair_a_cut_answer_as_inference_does(loaded):
    final = ask(loaded, COUGH, max_new_tokens=4, max_continuations=20)[-1]
    answer, = answers(final)
    assert answer.content.startswith("ACE inhibitors") and thinking(final)[0].content == "bradykinin builds up"


def test_untagged_text_has_no_reasoning_panel_and_is_not_passed_off_as_whole(loaded):
    final = ask(loaded, HELLO)[-1]
    assert not thinking(final)
    answer, = answers(final)
    assert answer.content.startswith("**Incomplete answer** (`no_tags`)") and "Hello there." in answer.content


def test_empty_and_too_long_questions_get_a_message_not_an_error(loaded):
    from medreason.serve import webchat
    assert [m.content for m in ask(loaded, "   ")[-1]] == [webchat.EMPTY_QUESTION]
    too_long, = ask(loaded, "fever " * 600)[-1]  # the tiny model reads 512 tokens
    assert too_long.content.startswith("**Question too long**") and "512 tokens" in too_long.content


def test_the_budget_is_cut_to_what_the_context_leaves(loaded):
    from medreason.serve import webchat
    from medreason.answers.prompts import generation_prompt
    budget = webchat.fit_budget(loaded, COUGH, 4096, max_continuations=2, continuation_tokens=256)
    room = 512 - len(loaded.tokenizer(generation_prompt(loaded.tokenizer, COUGH, loaded.style),
                                      add_special_tokens=False)["input_ids"])
    assert (budget.max_new_tokens, budget.max_continuations, budget.capped) == (room, 0, True)
    roomy = webchat.fit_budget(loaded, COUGH, 64, max_continuations=2, continuation_tokens=32)
    assert (roomy.max_new_tokens, roomy.max_continuations, roomy.capped) == (64, 2, False)


def test_closing_the_stream_stops_the_generation(loaded):
    """Closing the stream (Gradio's stop button, a closed tab) abandons the answer at its next token. Counted, not
    timed: the model's forward passes (one per generated token) are observed by a hook on its input embeddings, which
    also holds the answer's thread before its next pass while the stream closes, so a loaded machine cannot blur it."""
    from medreason.serve import webchat
    from medreason.answers.generation import GREEDY
    budget = webchat.Budget(150, 0, 32, False)
    unknown = "Something the parrot never heard?"  # it rambles until the budget runs out
    *_, (_, whole) = webchat.stream_answer(loaded, unknown, budget, GREEDY)
    assert whole.tokens == 150, whole.text  # left alone, it writes the whole budget

    passes, armed, held, release, stop = [], threading.Event(), threading.Event(), threading.Event(), threading.Event()

    def count_and_hold(module, args):
        # Held once: at the first pass after the test saw the first words, at the latest 10 tokens before the end.
        if not held.is_set() and (armed.is_set() or len(passes) >= budget.max_new_tokens - 10):
            held.set()
            release.wait(timeout=120)
        passes.append(1)

    hook = loaded.model.get_input_embeddings().register_forward_pre_hook(count_and_hold)
    try:
        stream = webchat.stream_answer(loaded, unknown, budget, GREEDY, stop=stop)
        next(stream)  # the first words arrived; the answer's thread goes on
        armed.set()
        assert held.wait(timeout=120)
        at_close = len(passes)
        threading.Thread(target=lambda: stop.wait() and release.set(), daemon=True).start()  # let it run on, stopped
        stream.close()  # what Gradio does on the stop button or a closed tab
    finally:
        release.set()
        hook.remove()
    assert at_close < budget.max_new_tokens and len(passes) - at_close <= 1  # the pass under way, then no more
    assert not [t for t in threading.enumerate() if t.name == "answer"]  # the model is free for the next question


def test_no_model_to_serve_is_a_one_line_error():
    env = {k: v for k, v in os.environ.items() if k != "MEDREASON_ADAPTER"}
    result = subprocess.run([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: no model to serve. Fix: python app.py --adapter")


# --- the page in a real browser ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(parrot_adapter, tmp_path_factory):
    """`python app.py --adapter <parrot>` on a free local port, stopped when the module's tests end."""
    import urllib.request
    port, log = free_port(), tmp_path_factory.mktemp("app") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--adapter", str(parrot_adapter),
                                    "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 180
    try:
        while True:
            assert process.poll() is None, f"app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"app.py did not serve within 180 s:\n{log.read_text()[-3000:]}"
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=CHROMIUM_FLAGS,
            headless=True, viewport={"width": 1100, "height": 1000})
        yield context
        context.close()


def open_page(browser, url):
    page = browser.new_page()
    page.goto(url)
    page.locator("#question textarea").wait_for(timeout=60_000)
    return page


def submit(page, question):
    box = page.locator("#question textarea")
    box.fill(question)
    box.press("Enter")


@pytest.mark.e2e
def test_the_page_in_a_browser(server, browser, tmp_path):
    from playwright.sync_api import expect
    from medreason.serve import webchat
    from medreason.answers.prompts import DISCLAIMER
    page = open_page(browser, server)
    expect(page.locator("#banner")).to_contain_text("a small LoRA fine-tune")
    expect(page.locator("#banner")).to_contain_text("not medical advice")
    expect(page.locator("#chat")).to_contain_text("Why do ACE inhibitors cause a dry cough?")  # the examples
    bot = page.locator('#chat [data-testid="bot"]')

    submit(page, "")
    expect(bot.last).to_have_text(webchat.EMPTY_QUESTION, timeout=30_000)

    submit(page, COUGH)
    expect(bot.last).to_contain_text("ACE inhibitors", timeout=60_000)
    expect(bot.last).to_contain_text(DISCLAIMER)
    panel = page.locator("#chat .thought-group")
    expect(panel).to_have_count(1)
    expect(panel.locator(".title")).to_contain_text("Thinking")
    expect(panel).not_to_contain_text("bradykinin")  # folded once the reasoning closed
    panel.locator(".title").click()
    expect(panel.get_by_text("bradykinin builds up")).to_be_visible()  # unfolds on a click
    page.wait_for_timeout(800)  # the unfolding is animated: let it finish before the screenshot
    page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
    panel.locator(".title").click()
    expect(panel.get_by_text("bradykinin builds up")).to_be_hidden()  # and folds again

    submit(page, HELLO)
    expect(bot.last).to_contain_text("Incomplete answer", timeout=60_000)
    expect(bot.last).to_contain_text("Hello there.")
    expect(panel).to_have_count(1)  # no reasoning, no new panel

    submit(page, "fever " * 600)
    expect(bot.last).to_contain_text("Question too long", timeout=60_000)
    expect(page.locator(".toast-body")).to_have_count(0)  # no error popped up at any point

    second = open_page(browser, server)  # another user, asking while the first one asks again
    submit(page, COUGH)
    submit(second, COUGH)
    for user in (page, second):
        expect(user.locator('#chat [data-testid="bot"]').last).to_contain_text(DISCLAIMER, timeout=60_000)
        expect(user.locator('#chat [data-testid="bot"]').last).to_contain_text("ACE inhibitors")
    second.close()
    if os.environ.get("UPDATE_SCREENSHOT"):  # UPDATE_SCREENSHOT=1 refreshes the README's picture
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "app.png", SCREENSHOT)
    page.close()
