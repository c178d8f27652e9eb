"""Rebuild handbook.jsonl from Debian's ``debian-handbook`` package (run once; the output is committed).

    apt-get download debian-handbook && dpkg -x debian-handbook_*.deb pkg
    python provmark/detector/zero_shot_data/build_handbook.py pkg/usr/share/doc/debian-handbook/html/en-US

Takes the prose paragraphs (DocBook ``<div class="para">`` blocks, outside code listings, screens and tables) of the English
HTML chapters in file-name order, keeps paragraphs of at least 25 words that end a sentence,
and packs consecutive paragraphs of one file into texts of at least ``MIN_WORDS`` words; the
first ``LIMIT`` texts are written, one JSON object a line.
"""

from __future__ import annotations

import html.parser
import json
import re
import sys
from pathlib import Path

MIN_WORDS, LIMIT = 420, 200
_SKIP = {"pre", "table", "script", "style"}


class _Paragraphs(html.parser.HTMLParser):
    """Text of the outermost ``<div class="para">`` blocks (DocBook's paragraphs), code listings,
    screens and tables left out."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs, self._buf, self._depth, self._para_depth, self._skip = [], [], 0, None, 0

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP:
            self._skip += 1
        if tag == "div":
            self._depth += 1
            if self._para_depth is None and ("class", "para") in attrs:
                self._para_depth, self._buf = self._depth, []

    def handle_endtag(self, tag):
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        if tag == "div":
            if self._depth == self._para_depth:
                self.paragraphs.append(" ".join("".join(self._buf).split()))
                self._para_depth = None
            self._depth -= 1

    def handle_data(self, data):
        if self._para_depth is not None and not self._skip:
            self._buf.append(data)


def main(folder: str) -> None:
    out = Path(__file__).with_name("handbook.jsonl")
    records = []
    for page in sorted(Path(folder).glob("*.html")):
        parser = _Paragraphs()
        parser.feed(page.read_text(encoding="utf-8"))
        current = []
        for paragraph in parser.paragraphs:
            if len(paragraph.split()) < 25 or not re.search(r"[.!?]\)?$", paragraph):
                continue
            current.append(paragraph)
            if sum(len(p.split()) for p in current) >= MIN_WORDS:
                records.append({"source": page.name, "text": "\n\n".join(current)})
                current = []
    with out.open("w", encoding="utf-8") as stream:
        for record in records[:LIMIT]:
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {min(len(records), LIMIT)} of {len(records)} texts to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
