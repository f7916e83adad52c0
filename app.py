"""A web chat page for a fine-tuned medical-reasoning model (Gradio); also the file a Hugging Face Space runs.

    python app.py --adapter outputs/demo-smollm2-135m/adapter        # the CPU demo adapter, offline; open the URL
    python app.py --adapter your-name/medical-llama-3.2-3b-lora      # a published adapter (or a merged folder)
    python app.py --gguf outputs/<run>/gguf/<run>-q8_0.gguf          # a GGUF export, answered by llama.cpp
    MEDREASON_ADAPTER=your-name/medical-llama-3.2-3b-lora python app.py   # how a Space is told (a Space variable)

Each question is asked alone, with exactly the prompt the model was trained with. The reasoning streams into a
folding "Thinking" message and the response into the answer below it, checked and repaired as in inference.py:
an answer that stays incomplete is shown as incomplete. For education only: not medical advice.
"""
import argparse
import os

# The environment variables naming the adapter and (optionally) its base model when no flag does: a Space's variables
from medreason.publish.space import ADAPTER_VARIABLE, BASE_VARIABLE

# --- model ---------------------------------------------------------------------------------------------------------
BACKEND = "auto"  # Unsloth's fast inference on a CUDA GPU where it imports; transformers + peft elsewhere
# --- generation: the defaults of the page's Settings ------------------------------------------------------------------
MAX_NEW_TOKENS = 1024  # budget per answer: a chain of thought needs ~500-900 tokens to reach </response>
MAX_CONTINUATIONS = 2  # times an answer cut off inside its reasoning or its answer is continued
CONTINUATION_TOKENS = 256  # budget of each continuation
SAMPLE = False  # False = greedy (reproducible); True samples with TEMPERATURE and TOP_P
TEMPERATURE = 0.6  # the usual setting for reasoning models when sampling
TOP_P = 0.95
REPETITION_PENALTY = 1.0  # >1 discourages loops in small models (1.1 is a mild setting)
# --- the server ------------------------------------------------------------------------------------------------------
HOST = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")  # this machine only; a Space sets 0.0.0.0 itself
PORT = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
CONCURRENCY_LIMIT = 1  # answers generated at once (one model in memory); other users wait in Gradio's queue
QUEUE_SIZE = 20  # questions that may wait; beyond that a user is told the queue is full
EXAMPLES = [  # shown under the empty chat; a click asks them
    "A 45-year-old presents with fatigue, pale skin and brittle nails. What is the most likely diagnosis?",
    "Why do ACE inhibitors cause a dry cough?",
    "What should be checked first in an unconscious patient?",
]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapter", default=os.environ.get(ADAPTER_VARIABLE, ""),
                   help=f"adapter folder, Hub repo id of a published adapter, or a merged model folder "
                        f"(default: ${ADAPTER_VARIABLE})")
    p.add_argument("--gguf", help="a GGUF file from SAVE_GGUF, answered by llama.cpp (instead of --adapter)")
    p.add_argument("--base-model", default=os.environ.get(BASE_VARIABLE) or None,
                   help=f"base model to put the adapter on (default: ${BASE_VARIABLE}, else the one it was trained on)")
    p.add_argument("--backend", default=BACKEND, choices=["auto", "unsloth", "transformers"])
    p.add_argument("--host", default=HOST, help="address to serve on (0.0.0.0 = every network interface)")
    p.add_argument("--port", type=int, default=PORT)
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    p.add_argument("--max-continuations", type=int, default=MAX_CONTINUATIONS)
    p.add_argument("--continuation-tokens", type=int, default=CONTINUATION_TOKENS)
    return p.parse_args(argv)


def main(argv) -> int:
    args = parse_args(argv)
    from medreason.serve import webchat
    from medreason.answers.generation import Sampling
    if args.gguf:
        from medreason.model.gguf import load_gguf
        loaded, source = load_gguf(args.gguf), args.gguf
        print(f"[load] GGUF {args.gguf} via llama.cpp; prompt style {loaded.style.name}")
    else:
        loaded, source = load_adapter(args), args.adapter
    page = webchat.build_page(loaded, source, EXAMPLES, args.max_new_tokens,
                              Sampling(SAMPLE, TEMPERATURE, TOP_P, REPETITION_PENALTY), args.max_continuations,
                              args.continuation_tokens, CONCURRENCY_LIMIT, QUEUE_SIZE)
    return serve(page, args)


def load_adapter(args):
    from medreason.config import tracking
    from medreason.model import for_inference
    from medreason.config.errors import UserError
    if not args.adapter:
        raise UserError(f"no model to serve. Fix: python app.py --adapter outputs/<run>/adapter (or a Hub id like "
                        f"your-name/medical-llama-3.2-3b-lora), or set {ADAPTER_VARIABLE} (on a Space: Settings -> "
                        f"Variables), or python app.py --gguf <file>.gguf.")
    tracking.load_secrets()  # HF_TOKEN for a private adapter, from .env
    backend = for_inference.choose_backend(args.backend)
    loaded = for_inference.load(args.adapter, args.base_model, backend)
    print(f"[load] {loaded.kind} {args.adapter} on {loaded.base_model} via {backend} ({loaded.model.device}); "
          f"prompt style {loaded.style.name}")
    return loaded


def serve(page, args) -> int:
    print(f"[app] serving on http://{args.host}:{args.port} (Ctrl+C stops it)")
    page.launch(server_name=args.host, server_port=args.port, ssr_mode=False, show_error=True)
    return 0


if __name__ == "__main__":
    from medreason.config.errors import run_cli
    run_cli(main)
