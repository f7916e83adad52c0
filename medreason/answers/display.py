"""Terminal display of answers: the response shown, the reasoning folded to one line unless asked for."""
from __future__ import annotations

import sys

from medreason.answers.tags import split_reasoning


def fold_thinking(text: str, style="think_response") -> tuple[str, bool]:
    """(text with the reasoning block folded to one line, whether the block is still open), in the style's layout."""
    reasoning, rest, closed = split_reasoning(text, style)
    if not closed:
        return (text, False) if rest == text else ("(reasoning…", True)  # no reasoning yet / reasoning still open
    if not reasoning:
        return rest, False
    return f"(reasoning folded: {len(reasoning.split())} words; --show-thinking shows it)\n" + rest, False


def make_streamer(tokenizer, show_thinking: bool, out=None, style="think_response"):
    """A transformers TextStreamer that prints new tokens, folding the reasoning unless show_thinking."""
    from transformers import TextStreamer

    class FoldingStreamer(TextStreamer):
        def __init__(self):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True,
                             clean_up_tokenization_spaces=False)
            self.out, self.buffer, self.printed = out or sys.stdout, "", 0

        def on_finalized_text(self, text: str, stream_end: bool = False):
            self.put_text(text, final=stream_end)

        def put_text(self, text: str, final: bool = False):
            self.buffer += text
            shown = self.buffer if show_thinking else fold_thinking(self.buffer, style)[0]
            if not final and "<" in shown[self.printed:]:  # hold back what may be the start of a tag
                shown = shown[:max(self.printed, shown.rfind("<"))]
            self.out.write(shown[self.printed:])
            self.out.flush()
            self.printed = len(shown)

    return FoldingStreamer()
