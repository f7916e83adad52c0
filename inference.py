"""Answer medical questions with a fine-tuned model, checking that every answer's tags close.

    python inference.py --adapter outputs/medical-llama-3.2-3b/adapter --question "What causes …?"
    python inference.py --adapter your-name/medical-llama-3.2-3b-lora --question "…"   # a published adapter
    python inference.py --adapter <dir> --input questions.jsonl --output answers.jsonl   # batch mode
    python inference.py --adapter <dir>                                                 # interactive chat
    python inference.py --gguf outputs/<run>/gguf/<run>-q8_0.gguf --question "…"       # a GGUF export, in llama.cpp

The prompt (system prompt included) is the one the model was trained with. Answers cut off by the token budget
are continued; closing tags are only ever written by the model. Batch mode exits with status 3 if any answer is
still incomplete. For education only: not medical advice.
"""
import argparse
import json
import sys
from pathlib import Path

# --- model and generation (each is also a command-line flag) -------------------------------------------------------
BACKEND = "auto"  # Unsloth's fast inference on a CUDA GPU where it imports; transformers + peft elsewhere
MAX_NEW_TOKENS = 1024  # budget per answer when the adapter records none (the run's MAX_NEW_TOKENS wins)
ENGINE = "auto"  # batch mode: continuous batching where it applies, else batched generate (medreason/answers/generation.py)
MAX_CONTINUATIONS = 2  # times an answer cut off inside <think>/<response> is continued
CONTINUATION_TOKENS = 256  # budget of each continuation
BATCH_SIZE = 8  # questions answered together in batch mode (left-padded); lower it if out of memory
SAMPLE = False  # False = greedy (reproducible); True samples with TEMPERATURE and TOP_P
TEMPERATURE = 0.6  # the usual setting for reasoning models when sampling
TOP_P = 0.95
REPETITION_PENALTY = 1.0  # >1 discourages loops in small models (1.1 is a mild setting)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--adapter", help="adapter folder, Hub repo id of a published adapter, or a merged model "
                                         "folder")
    model.add_argument("--gguf", help="a GGUF file from SAVE_GGUF, answered by llama.cpp (llama-cpp-python) with "
                                      "the prompt in the training_info.json beside it")
    p.add_argument("--backend", default=BACKEND, choices=["auto", "unsloth", "transformers"],
                   help="auto = Unsloth's fast inference on a CUDA GPU, transformers + peft elsewhere")
    p.add_argument("--base-model", help="base model to put the adapter on (default: the one it was trained on; "
                                        "'embedded' for the shipped SmolLM2)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--question", help="answer one question, streaming tokens to the terminal")
    mode.add_argument("--input", type=Path, help="JSONL file with a 'question' (or 'Question') field per line")
    p.add_argument("--output", type=Path, help="JSONL answers for --input (default: <input>.answers.jsonl)")
    p.add_argument("--show-thinking", action="store_true", help="print the reasoning instead of folding it")
    p.add_argument("--no-disclaimer", action="store_true", help="leave out the not-medical-advice line")
    p.add_argument("--max-new-tokens", type=int, help=f"budget per answer (default: the one the run trained for, "
                                                      f"saved with the adapter; else {MAX_NEW_TOKENS})")
    p.add_argument("--engine", default=ENGINE, choices=["auto", "continuous", "batched"])
    p.add_argument("--max-continuations", type=int, default=MAX_CONTINUATIONS)
    p.add_argument("--continuation-tokens", type=int, default=CONTINUATION_TOKENS)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--sample", action="store_true", default=SAMPLE, help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=TEMPERATURE)
    p.add_argument("--top-p", type=float, default=TOP_P)
    p.add_argument("--repetition-penalty", type=float, default=REPETITION_PENALTY)
    return p.parse_args(argv)


def read_questions(path: Path) -> list[str]:
    from medreason.data.layouts import shown_names, text_problem
    from medreason.data.readers import load_records
    from medreason.config.errors import UserError
    if not path.is_file():
        raise UserError(f"--input {path}: no such file. Fix: pass a .jsonl/.json/.csv/.parquet file with a "
                        f"'question' field per row.")
    questions = []
    for line_no, row in enumerate(load_records(str(path), setting="--input"), start=1):
        key = "question" if "question" in row else "Question"
        problem = text_problem(row.get(key)) if key in row else None
        if key not in row or problem:
            what = f"'{key}' {problem}" if problem else f"no 'question' field (fields: {shown_names(row)})"
            raise UserError(f"{path}: row {line_no} has {what}. Fix: give every row a non-empty \"question\" text.")
        questions.append(row[key])
    return questions


def main(argv) -> int:
    args = parse_args(argv)
    from medreason.answers import answering, display
    from medreason.config import tracking
    from medreason.model import for_inference
    from medreason.answers.generation import Sampling
    from medreason.answers.prompts import DISCLAIMER
    from medreason.answers.emergency import emergency_line
    tracking.load_secrets()  # HF_TOKEN for private adapters, from .env
    questions = read_questions(args.input) if args.input else None  # a bad file is reported before the model loads
    if args.gguf:
        from medreason.model.gguf import load_gguf
        loaded = load_gguf(args.gguf)
        print(f"[load] GGUF {args.gguf} via llama.cpp ({loaded.model.device}); prompt style {loaded.style.name}",
              file=sys.stderr)
    else:
        backend = for_inference.choose_backend(args.backend)
        loaded = for_inference.load(args.adapter, args.base_model, backend)
        print(f"[load] {loaded.kind} {args.adapter} on {loaded.base_model} via {backend} ({loaded.model.device})",
              file=sys.stderr)
    options = dict(sampling=Sampling(args.sample, args.temperature, args.top_p, args.repetition_penalty),
                   max_continuations=args.max_continuations, continuation_tokens=args.continuation_tokens,
                   engine=args.engine)
    budget, why = loaded.budget(args.max_new_tokens, MAX_NEW_TOKENS)
    print(f"[load] {budget} new tokens per answer ({why})", file=sys.stderr)
    disclaimer = not args.no_disclaimer

    def ask(question: str):
        if line := emergency_line(question):  # chest pain, stroke signs, suicidal thoughts (medreason/answers/emergency.py)
            print(line)
        streamer = display.make_streamer(loaded.tokenizer, args.show_thinking, style=loaded.style)
        answer, = answering.answer_batch(loaded.model, loaded.tokenizer, [question], loaded.style, budget,
                                         streamer=streamer, **options)
        print(f"\n[status: {answer.status}; {answer.tokens} tokens; {answer.continuations} continuation(s)]")
        if disclaimer:
            print(DISCLAIMER)
        return answer

    if args.question:
        return 0 if ask(args.question).status == "complete" else 3
    if args.input:
        answers = answering.answer_all(loaded.model, loaded.tokenizer, questions, loaded.style, budget,
                                       args.batch_size, **options)
        output = args.output or args.input.with_suffix(".answers.jsonl")
        with output.open("w", encoding="utf-8") as f:
            for answer in answers:
                line = emergency_line(answer.question)  # shown first, as in the page
                f.write(json.dumps({**({"emergency": line} if line else {}), **answer.as_row()},
                                   ensure_ascii=False) + "\n")
        incomplete = sum(a.status != "complete" for a in answers)
        print(f"{len(answers)} answers -> {output}; {len(answers) - incomplete} complete, {incomplete} incomplete"
              + (f" ({', '.join(sorted({a.status for a in answers if a.status != 'complete'}))})" if incomplete
                 else ""))
        return 3 if incomplete else 0
    print("Ask a medical question (type 'quit' to leave).")
    while True:
        try:
            question = input("\n> ").strip()
        except EOFError:
            return 0
        if question.lower() in {"quit", "exit", "q"}:
            return 0
        if question:
            ask(question)


if __name__ == "__main__":
    from medreason.config.errors import run_cli
    run_cli(main)
