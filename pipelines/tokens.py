"""Text cleanup and tokenisation: ``text/**`` with a ``txt`` member → ``tokens/**`` with the
cleaned text (``txt``) and its tokens (``json``)."""

import json
import re
import unicodedata

from datarepo import pipeline

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def clean(text: str) -> str:
    """Unicode NFKC, lower case, one space between words, no control characters."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(text.split())


@pipeline(input="text/**", output="tokens/", version="1", params={"min_length": 1})
def tokens(datum, min_length):
    if "txt" not in datum:
        return None  # nothing to tokenise: filtered out
    text = clean(datum["txt"].decode("utf-8", errors="replace"))
    words = [w for w in WORD.findall(text) if len(w) >= min_length]
    return {"txt": text, "json": json.dumps({"tokens": words, "count": len(words)})}
