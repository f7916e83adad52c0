"""Terminal display of answers: the response shown, the reasoning folded to one line unless asked for."""
from __future__ import annotations

import sys


def fold_thinking(text: str) -> tuple[str, bool]:
    """(text with the <think> block folded to one line, whether the block is still open)."""
    start = text.find("<think>")
    if start < 0:
        return text, False
    end = text.find("</think>", start)
    if end < 0:
        return text[:start] + "(reasoning…", True
    words = len(text[start + len("<think>"):end].split())
    return text[:start] + f"(reasoning folded: {words} words; --show-thinking shows it)\n" + \
        text[end + len("</think>"):].lstrip("\n"), False


def make_streamer(tokenizer, show_thinking: bool, out=None):
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
            shown = self.buffer if show_thinking else fold_thinking(self.buffer)[0]
            if not final and "<" in shown[self.printed:]:  # hold back what may be the start of a tag
                shown = shown[:max(self.printed, shown.rfind("<"))]
            self.out.write(shown[self.printed:])
            self.out.flush()
            self.printed = len(shown)

    return FoldingStreamer()
