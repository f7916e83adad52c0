"""GGUF files for llama.cpp and Ollama, made offline on either backend, and answering from one.

    merged 16-bit model --(llama.cpp's convert_hf_to_gguf.py)--> 16-bit GGUF --(llama_model_quantize)--> q8_0, q4_k_m…
                                                                        + Modelfile (Ollama) + training_info.json

Both tools come from one package the project installs, llama-cpp-python (scripts/setup.sh): its compiled library
quantizes (llama.cpp's C API `llama_model_quantize`, the code behind the `llama-quantize` tool) and answers, and the
converter is the `convert_hf_to_gguf.py` of the very llama.cpp sources it was built from (its source archive carries
them; setup.sh unpacks the converter, its `conversion/` package and its `gguf-py` into .venv/share/llama.cpp). Nothing
is cloned or built at run time, so an export needs no internet.

The Modelfile gives Ollama the model's chat template in Ollama's Go-template syntax (derived from the tokenizer's own
chat template and checked to render the same prompt), the system prompt the model was trained with, the stop tokens
and the sampling defaults inference uses. `inference.py --gguf` and `app.py --gguf` answer through llama.cpp with the
same prompt, tag checks and repair as every other path (answering.py; this module supplies the generation step).
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from medreason.answers.generation import GREEDY, _decoded, closing_position
from medreason.answers.prompts import _adds_bos, prompt_messages
from medreason.config.errors import UserError
from medreason.model import run_record
from medreason.model.for_inference import Loaded, trained_style
from medreason.model.for_training import load_tokenizer

LLAMA_CPP_PYTHON = "0.3.36"  # the pinned llama-cpp-python (requirements-cpu.txt); its sources carry the converter
CONVERTER_DIR_VARIABLE = "LLAMA_CPP_DIR"  # a llama.cpp checkout to take convert_hf_to_gguf.py from instead
CONVERTER_HOME = Path(sys.prefix) / "share" / "llama.cpp"  # where setup.sh unpacks the converter
# Quantization types llama.cpp's quantizer writes from a 16-bit GGUF (name -> llama_ftype constant in llama_cpp).
# k-quants work on rows of 256: where a model's rows are not (SmolLM2's 576), llama.cpp stores those tensors in a
# fallback type and says so.
QUANT_TYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S", "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
}
UNQUANTIZED = ("f16", "bf16", "f32")  # written by the converter itself (no quantizer step)
OLLAMA_CONTEXT = 4096  # num_ctx in the Modelfile (at most the model's own): prompt + answer + continuations fit
MODELFILE = "Modelfile"
GGUF_N_CTX = 4096  # llama.cpp's context when answering (at most the model's own)


# --- the tools -------------------------------------------------------------------------------------------------------

def converter_script() -> Path:
    home = Path(os.environ[CONVERTER_DIR_VARIABLE]) if os.environ.get(CONVERTER_DIR_VARIABLE) else CONVERTER_HOME
    return home / "convert_hf_to_gguf.py"


def missing_tools() -> str | None:
    """Why this machine cannot export GGUF offline (the fix included), or None when it can."""
    import importlib.util
    fix = (f"Fix: bash scripts/setup.sh (it installs llama-cpp-python=={LLAMA_CPP_PYTHON} and unpacks llama.cpp's "
           f"converter), or set {CONVERTER_DIR_VARIABLE} to a llama.cpp checkout, or --SAVE_GGUF='' (the merged "
           f"model can be converted later).")
    if importlib.util.find_spec("llama_cpp") is None:
        return f"llama-cpp-python is not installed. {fix}"
    if not converter_script().is_file():
        return f"llama.cpp's converter is not at {converter_script()}. {fix}"
    return None


def parse_methods(save_gguf: str) -> tuple[str, ...]:
    """SAVE_GGUF as a tuple of quantization names: "q4_k_m" or "q4_k_m,q8_0"; "" = none."""
    methods = tuple(m.strip().lower() for m in str(save_gguf or "").split(",") if m.strip())
    known = (*QUANT_TYPES, *UNQUANTIZED)
    for method in methods:
        if method not in known:
            raise UserError(f"SAVE_GGUF={save_gguf!r}: {method!r} is not a type llama.cpp writes here. Fix: one or "
                            f"more of {', '.join(known)}, comma-separated (e.g. 'q4_k_m,q8_0'), or '' for none.")
    return tuple(dict.fromkeys(methods))


def convert(model_dir: Path, outfile: Path, outtype: str) -> Path:
    """llama.cpp's convert_hf_to_gguf.py on a merged model folder, in its own process (it imports its own gguf-py)."""
    source = _converter_source(model_dir, outfile.with_name(outfile.name + ".src"))
    command = [sys.executable, str(converter_script()), str(source), "--outfile", str(outfile),
               "--outtype", outtype]
    try:
        return _run_converter(command, model_dir, outfile)
    finally:
        if source != model_dir:
            shutil.rmtree(source, ignore_errors=True)


def _byte_level_bpe(tokenizer_json: dict) -> bool:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return tokenizer_json.get("model", {}).get("type") == "BPE" and any(p.get("type") == "ByteLevel" for p in parts)


def _converter_source(model_dir: Path, staging: Path) -> Path:
    """The folder the converter reads. A byte-level BPE tokenizer.json (GPT-2 style, as SmolLM2's) that also claims
    SentencePiece's byte fallback, as transformers writes for a tokenizer it read from a GGUF file (the embedded
    model's), is taken by llama.cpp for a SentencePiece vocabulary and tokenizes wrongly: the converter then reads
    a staging folder (links to the model's files) whose tokenizer.json says what the tokenizer does, byte-level
    BPE without byte fallback. It tokenizes every text the same (no byte-level text ever falls back)."""
    path = model_dir / "tokenizer.json"
    tokenizer_json = json.loads(path.read_text()) if path.is_file() else {}
    if not (_byte_level_bpe(tokenizer_json) and tokenizer_json["model"].get("byte_fallback")):
        return model_dir
    print("[gguf] the tokenizer is byte-level BPE with a SentencePiece byte fallback attached (written by "
          "transformers' GGUF reader): converting with the byte fallback off, as llama.cpp's GPT-2 vocabulary")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for file in model_dir.iterdir():
        if file.name != "tokenizer.json":
            (staging / file.name).symlink_to(file.resolve())
    tokenizer_json["model"]["byte_fallback"] = False
    tokenizer_json["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                 "use_regex": True}
    (staging / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
    return staging


def _run_converter(command: list[str], model_dir: Path, outfile: Path) -> Path:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the converter reads the folder; it must never reach the Hub
    done = subprocess.run(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0 or not outfile.is_file():
        tail = "\n".join(done.stdout.strip().splitlines()[-8:])
        raise RuntimeError(f"convert_hf_to_gguf.py failed (exit {done.returncode}) on {model_dir}:\n{tail}")
    return outfile


def quantize(source: Path, target: Path, method: str) -> Path:
    """llama.cpp's quantizer (llama_model_quantize, as the llama-quantize tool runs it) from a 16-bit GGUF."""
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[method])
    params.nthread = os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0 or not target.is_file():
        raise RuntimeError(f"llama_model_quantize failed ({status}) writing {method} from {source}")
    return target


def sixteen_bit_type(model_dir: Path) -> str:
    """The converter's 16-bit type for this model: bf16 where its weights are bf16 (f16 would overflow them)."""
    config = json.loads((model_dir / "config.json").read_text())
    return "bf16" if str(config.get("dtype") or config.get("torch_dtype")) == "bfloat16" else "f16"


# --- Ollama's Modelfile ----------------------------------------------------------------------------------------------

_SENTINEL = "\x00{}\x00"


@dataclass(frozen=True)
class ChatPieces:
    """What the chat template writes around each message, read off the template itself."""
    start: str  # before the first message (e.g. a BOS token, a template's fixed preamble)
    prefix: dict  # role -> text before the content
    suffix: dict  # role -> text after the content
    generation: str  # the assistant opening after the last message (add_generation_prompt)


def chat_pieces(tokenizer, adds_bos: bool | None = None) -> ChatPieces:
    """Render the tokenizer's chat template on marked messages and read what it writes around each role.
    adds_bos: whether tokenizing adds the BOS token by itself (default: ask the tokenizer), as llama.cpp then does
    for Ollama: a BOS the template writes is then left out of Ollama's template."""
    def render(messages, generation):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    sys_, user, asst, user2 = (_SENTINEL.format(n) for n in ("S", "U", "A", "V"))
    conv = [{"role": "system", "content": sys_}, {"role": "user", "content": user},
            {"role": "assistant", "content": asst}, {"role": "user", "content": user2}]
    full, no_gen, to_asst = render(conv, True), render(conv, False), render(conv[:3], False)
    try:
        start, rest = full.split(sys_)
        x1, rest = rest.split(user)
        x2, rest = rest.split(asst)
        x3, x4 = rest.split(user2)
        user_suffix = no_gen.split(user2)[1]
        asst_suffix = to_asst.split(asst)[1]
    except ValueError:
        raise UserError("the model's chat template does not write each message once, in order; an Ollama "
                        "template cannot be derived from it. Fix: write the Modelfile's TEMPLATE by hand.") from None
    pieces = [x4.startswith(user_suffix), x2.startswith(user_suffix), x3.startswith(asst_suffix)]
    user_prefix = x3[len(asst_suffix):]
    if not all(pieces) or not x1.endswith(user_prefix):
        raise UserError("the model's chat template writes messages differently by position; an Ollama template "
                        "cannot be derived from it. Fix: write the Modelfile's TEMPLATE by hand.")
    bos = tokenizer.bos_token or ""
    adds_bos = _adds_bos(tokenizer) if adds_bos is None else adds_bos
    if bos and adds_bos and start.startswith(bos):  # llama.cpp adds it where the vocabulary says so: not twice
        start, sys_prefix = bos, start[len(bos):]
    else:
        start, sys_prefix = "", start
    return ChatPieces(start, {"system": sys_prefix, "user": user_prefix, "assistant": x2[len(user_suffix):]},
                      {"system": x1[:len(x1) - len(user_prefix)], "user": user_suffix, "assistant": asst_suffix},
                      x4[len(user_suffix):])


def _go_text(text: str) -> str:
    if "{{" in text or "}}" in text:
        raise UserError("the chat template's markers contain '{{' or '}}', which Ollama's template syntax cannot "
                        "hold as text. Fix: write the Modelfile's TEMPLATE by hand.")
    return text


def ollama_template(pieces: ChatPieces) -> str:
    """The chat template in Ollama's Go-template syntax: each message in .Messages (Ollama puts the Modelfile's
    SYSTEM first when a request has none) wrapped as the model's template wraps it, then the assistant opening.
    The BOS token is not written: llama.cpp adds it where the model's vocabulary asks for it."""
    # No {{- / -}} trim markers: they would also eat the newlines the chat template writes after a message.
    branches = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}'
        f'{_go_text(pieces.prefix[role])}{{{{ .Content }}}}{_go_text(pieces.suffix[role])}'
        for i, role in enumerate(("system", "user", "assistant")))
    return f"{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{_go_text(pieces.generation)}"


_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def render_ollama_template(template: str, messages: list[dict]) -> str:
    """Render the Go-template constructs ollama_template writes, and nothing else: `range .Messages`,
    `if/else if eq .Role "…"`, `end`, `.Content`, `.Role`, with Go's `{{-`/`-}}` whitespace trimming. Anything else
    raises, so a template this cannot render is never taken as checked."""
    tokens, pos = [], 0
    for m in _ACTION.finditer(template):
        tokens.append(("text", template[pos:m.start()]))
        tokens.append(("action", m.group(2), bool(m.group(1)), bool(m.group(3))))
        pos = m.end()
    tokens.append(("text", template[pos:]))
    for i, token in enumerate(tokens):  # Go trims the whitespace next to a {{- or -}}
        if token[0] != "action":
            continue
        if token[2] and tokens[i - 1][0] == "text":
            tokens[i - 1] = ("text", tokens[i - 1][1].rstrip(" \t\r\n"))
        if token[3] and tokens[i + 1][0] == "text":
            tokens[i + 1] = ("text", tokens[i + 1][1].lstrip(" \t\r\n"))
    tree, rest = _parse(tokens, 0)
    if rest != len(tokens):
        raise ValueError("unbalanced {{ end }}")
    return _run(tree, {"Messages": messages}, None)


def _parse(tokens, i, stop=("end",)):
    nodes = []
    while i < len(tokens):
        token = tokens[i]
        if token[0] == "text":
            nodes.append(("text", token[1]))
            i += 1
            continue
        action = token[1]
        if action == "end" or action.startswith("else"):
            return nodes, i
        if action == "range .Messages":
            body, i = _parse(tokens, i + 1)
            nodes.append(("range", body))
            i += 1
        elif m := re.fullmatch(r'if eq \.Role "(\w+)"', action):
            branches = []
            role = m.group(1)
            while True:
                body, i = _parse(tokens, i + 1)
                branches.append((role, body))
                closing = tokens[i][1]
                if closing == "end":
                    break
                m2 = re.fullmatch(r'else if eq \.Role "(\w+)"', closing)
                if not m2:
                    raise ValueError(f"unsupported template action {{{{ {closing} }}}}")
                role = m2.group(1)
            nodes.append(("if", branches))
            i += 1
        elif action in (".Content", ".Role"):
            nodes.append(("field", action[1:]))
            i += 1
        else:
            raise ValueError(f"unsupported template action {{{{ {action} }}}}")
    return nodes, i


def _run(nodes, data, message) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "range":
            out.extend(_run(node[1], data, m) for m in data["Messages"])
        elif node[0] == "if":
            branch = next((body for role, body in node[1] if message["role"] == role), None)
            if branch is not None:
                out.append(_run(branch, data, message))
        elif node[0] == "field":
            out.append(message["content" if node[1] == "Content" else "role"])
    return "".join(out)


def stop_tokens(tokenizer, model_dir: Path | None = None) -> list[str]:
    """The end-of-turn tokens generation stops on: the tokenizer's eos and the generation config's eos ids."""
    ids = []
    config = model_dir / "generation_config.json" if model_dir else None
    if config and config.is_file():
        eos = json.loads(config.read_text()).get("eos_token_id")
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    names = [tokenizer.eos_token] + [tokenizer.convert_ids_to_tokens(i) for i in ids]
    return list(dict.fromkeys(n for n in names if n))


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise UserError(f"the {what} contains '\"\"\"', which ends a Modelfile block. Fix: remove it from the {what}.")
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, template: str, system_prompt: str, stops: list[str], max_new_tokens: int,
                   context: int, sampling) -> str:
    """An Ollama Modelfile: FROM the GGUF beside it, the template, the trained system prompt, stops and sampling
    (inference's defaults: greedy unless sampling is asked for; no repeat penalty unless inference sets one)."""
    lines = [f"# Made by medreason (medreason/model/gguf.py): `ollama create <name> -f {MODELFILE}` in this folder.",
             f"FROM ./{gguf_name}", f"TEMPLATE {_quoted(template, 'chat template')}"]
    if system_prompt:
        lines.append(f"SYSTEM {_quoted(system_prompt, 'system prompt')}")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER temperature {sampling.temperature if sampling.do_sample else 0}",
              f"PARAMETER top_p {sampling.top_p}", f"PARAMETER repeat_penalty {sampling.repetition_penalty}",
              f"PARAMETER num_predict {max_new_tokens}", f"PARAMETER num_ctx {context}"]
    return "\n".join(lines) + "\n"


def write_modelfile(folder: Path, gguf_file: Path, tokenizer, info: dict, model_dir: Path | None,
                    max_new_tokens: int, context: int) -> Path:
    """The Modelfile beside the GGUF, its template checked against the tokenizer's for the trained prompt."""
    style = trained_style(info)
    pieces = chat_pieces(tokenizer)
    template = ollama_template(pieces)
    check_template(template, tokenizer, prompt_messages("Is the template the same?", style), pieces.start)
    system = next((m["content"] for m in prompt_messages("?", style) if m["role"] == "system"), "")
    text = modelfile_text(gguf_file.name, template, system, stop_tokens(tokenizer, model_dir), max_new_tokens,
                          min(context, OLLAMA_CONTEXT), GREEDY)
    path = folder / MODELFILE
    path.write_text(text)
    return path


def check_template(template: str, tokenizer, messages: list[dict], left_out: str = "") -> str:
    """The Go template renders exactly the tokenizer's prompt for these messages (but for `left_out`, the BOS
    that llama.cpp adds itself); returns the rendering."""
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rendered = render_ollama_template(template, messages)
    if left_out + rendered != expected:
        raise UserError("the Ollama template derived from the chat template renders another prompt than the "
                        "tokenizer's. Fix: write the Modelfile's TEMPLATE by hand.")
    return rendered


def ollama_command(folder: Path, name: str) -> str:
    return f"cd {folder} && ollama create {name} -f {MODELFILE} && ollama run {name}"


# --- the export ------------------------------------------------------------------------------------------------------

def export(merged_dir: Path, out_dir: Path, methods: tuple[str, ...], info: dict, name: str,
           max_new_tokens: int) -> list[Path]:
    """Convert the merged model once to 16-bit GGUF, quantize it to each method, write the Modelfile for the first
    and training_info.json; returns the files written. The 16-bit file is kept only when asked for."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sixteen = sixteen_bit_type(merged_dir)
    base = out_dir / f"{name}-{sixteen}.gguf"
    start = time.time()
    convert(merged_dir, base, sixteen)
    print(f"[gguf] converted with llama.cpp's convert_hf_to_gguf.py -> {base.name} "
          f"({base.stat().st_size / 1e6:.0f} MB, {time.time() - start:.0f} s)")
    written = []
    for method in methods:
        if method in UNQUANTIZED:
            target = out_dir / f"{name}-{method}.gguf"
            if method != sixteen:
                convert(merged_dir, target, method)
        else:
            start, target = time.time(), out_dir / f"{name}-{method}.gguf"
            quantize(base, target, method)
            print(f"[gguf] quantized {method} with llama.cpp -> {target.name} ({target.stat().st_size / 1e6:.0f} MB, "
                  f"{time.time() - start:.0f} s)")
        written.append(target)
    if sixteen not in methods:
        base.unlink()
    tokenizer = load_tokenizer(str(merged_dir))
    config = json.loads((merged_dir / "config.json").read_text())
    context = int(config.get("max_position_embeddings") or OLLAMA_CONTEXT)
    modelfile = write_modelfile(out_dir, written[0], tokenizer, info, merged_dir, max_new_tokens, context)
    record = run_record.write(out_dir, info)  # the adapter's run record, as it is: answering asks as trained
    print(f"[gguf] Ollama: {ollama_command(out_dir, name)}")
    if len(written) > 1:
        print(f"[gguf] the {MODELFILE} uses {written[0].name}; for another file change its FROM line")
    return [*written, modelfile, record]


# --- answering from a GGUF -------------------------------------------------------------------------------------------

class LlamaCppModel:
    """A GGUF loaded in llama.cpp (llama-cpp-python), answering through generation.generate's contract."""
    is_llama_cpp = True
    device = "cpu (llama.cpp)"

    def __init__(self, path: Path, n_ctx: int = GGUF_N_CTX, threads: int | None = None):
        from llama_cpp import Llama
        self.path = path
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads or os.cpu_count(), seed=0,
                         verbose=False)
        self.config = _Config(min(self.llm.n_ctx(), self.llm._model.n_ctx_train()))

    def n_params(self) -> int:
        return int(self.llm._model.n_params())

    def stop_ids(self, tokenizer) -> set[int]:
        ids = {self.llm.token_eos(), self.llm._model.token_eot()} - {-1}
        if tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)
        return ids

    def generate_texts(self, tokenizer, texts: list[str], max_new_tokens: int, sampling, streamer=None,
                       stop_text: str | None = None, seed: int | None = None):
        """Each text continued one after another (llama.cpp here serves one sequence), stopping at an end-of-turn
        token or once stop_text is complete; returns generation.Generation objects, as generation.generate does."""
        stop_ids = self.stop_ids(tokenizer)
        results = []
        for text in texts:
            prompt = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if streamer is not None:
                streamer.put(_ids(prompt))  # the prompt goes first: the streamer skips it, as with transformers
            if seed is not None:
                self.llm.set_seed(seed)
            tokens, budget = [], min(max_new_tokens, self.config.max_position_embeddings - len(prompt))
            if budget < 1:
                raise UserError(f"the prompt is {len(prompt)} tokens, the whole context of {self.path.name} "
                                f"({self.config.max_position_embeddings}). Fix: a shorter question.")
            for token in self.llm.generate(prompt, **_sampler(sampling)):
                tokens.append(token)
                if streamer is not None and token not in stop_ids:
                    streamer.put(_ids([token]))
                if token in stop_ids or len(tokens) >= budget or \
                        closing_position(tokenizer, tokens, stop_text, len(tokens) - 1) is not None:
                    break
            if streamer is not None:
                streamer.end()
            results.append(_decoded(tokenizer, tokens, stop_ids, budget, stop_text))  # a full context: cut
        return results


@dataclass(frozen=True)
class _Config:
    max_position_embeddings: int


def _ids(tokens):
    import torch
    return torch.tensor([list(tokens)])


def _sampler(sampling) -> dict:
    """llama.cpp's sampler set as transformers samples: greedy, or temperature + top-p (no min-p, top-k 50 as
    transformers' default), and the same repetition penalty."""
    if not sampling.do_sample:
        return {"temp": 0.0, "repeat_penalty": sampling.repetition_penalty, "top_k": 1, "min_p": 0.0}
    return {"temp": sampling.temperature, "top_p": sampling.top_p, "top_k": 50, "min_p": 0.0,
            "repeat_penalty": sampling.repetition_penalty}


def gguf_tokenizer(path: Path):
    """The tokenizer the GGUF carries (vocabulary and chat template), through transformers: prompts are built by
    prompts.generation_prompt exactly as for every other model."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def load_gguf(source: str):
    """A GGUF file ready to answer: the model in llama.cpp, its tokenizer, and the prompt it was trained with (from
    the training_info.json the export writes beside it)."""
    path = Path(source).expanduser()
    if not path.is_file() or path.suffix != ".gguf":
        raise UserError(f"--gguf {source}: no such .gguf file. Fix: pass a file written by SAVE_GGUF, e.g. "
                        f"outputs/<run>/gguf/<name>-q8_0.gguf.")
    if missing_tools() and "not installed" in missing_tools():
        raise UserError(f"--gguf needs llama-cpp-python. Fix: bash scripts/setup.sh (or pip install "
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON}).")
    info = run_record.read(path.parent)
    if not info:
        print(f"[load] note: no {run_record.FILE_NAME} beside {path.name}: asking with the default prompt style and "
              f"system prompt, which may not be the ones the model was trained with")
    model = LlamaCppModel(path)
    return Loaded(model, gguf_tokenizer(path), trained_style(info), str(path), "gguf", info, "llama.cpp")
