"""Markdown for the offline evaluator: the prose blocks, the structure and the sources.

``parse`` finds the prose blocks (paragraphs, list items, blockquotes), counts headings,
lists, code blocks, tables, images and links, and records where sources are cited. It works
on a *masked* copy of the content, the same length, in which code, URLs and markdown syntax
are blanked out with spaces; so a span found in the mask is the same span of the content.
Every pass is a single regex scan or a loop over lines, so the cost grows linearly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

# Line patterns are used with match(content, line_start, line_end): "$" is the line's end.
_FENCE = re.compile(r"[ ]{0,3}(`{3,}|~{3,})")
_BLANK = re.compile(r"\s*$")
_ATX_HEADING = re.compile(r"[ ]{0,3}#{1,6}(?:\s|$)")
_SETEXT_UNDERLINE = re.compile(r"[ ]{0,3}(?:=+|-+)\s*$")
_RULE = re.compile(r"[ ]{0,3}(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:_[ \t]*){3,})\s*$")
_TABLE_ROW = re.compile(r"[ \t]*\|")
_LIST_ITEM = re.compile(r"[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+(?=\S)")
_QUOTE_MARKER = re.compile(r"(?:[ ]{0,3}>[ ]?)+")
_INDENT = re.compile(r"[ \t]*")

# Inline syntax, blanked in order. None spans a newline, and bracket text stops at the next
# bracket, so a line full of unmatched brackets stays linear.
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_IMAGE = re.compile(r"!\[[^\[\]\n]{0,500}\]\([^)\s]{0,2000}(?:[ \t]+\"[^\"\n]{0,300}\")?\)")
_LINK = re.compile(r"\[([^\[\]\n]{1,500})\]\([^)\s]{0,2000}(?:[ \t]+\"[^\"\n]{0,300}\")?\)")
_REF_LINK = re.compile(r"\[([^\[\]\n]{1,500})\]\[[^\[\]\n]{0,200}\]")
_REF_DEFINITION = re.compile(r"^[ ]{0,3}\[[^\]\n]{1,200}\]:[ \t]*\S.*$", re.M)
_AUTOLINK = re.compile(r"<(?:https?|ftp|mailto):[^\s<>]{1,2000}>", re.I)
# Lower-case schemes only: a case-insensitive scan of every position costs three times as much.
_BARE_URL = re.compile(r"(?<![\w/])(?:https?://|www\.)[^\s<>\"'`\[\]()]+")
_FOOTNOTE = re.compile(r"\[\^[^\]\s]{1,50}\]")
_NUMERIC_CITATION = re.compile(r"\[\d{1,4}(?:[ \t]*[,;\u2013-][ \t]*\d{1,4}){0,20}\]")
# "(Smith et al., 2020)", "(2019a)" and "according to ..." also count as sources.
_AUTHOR_YEAR = re.compile(r"\([^()\n]{0,120}\b(?:1[6-9]|20)\d{2}[a-z]?\)")
_ATTRIBUTION = r"(?:according\s+to|et\s+al|sources?:)"


# -- the parsed document ----------------------------------------------------------------------
@dataclass(slots=True)
class Block:
    """A run of prose: a paragraph, a list item or a blockquote."""

    start: int
    end: int
    kind: str  # "paragraph" | "list"
    words: int = 0
    first_sentence: int = -1


@dataclass(slots=True)
class Layout:
    """The masked content, its prose blocks and what else it holds."""

    masked: str = ""
    # masked.lower() when that keeps every offset (it nearly always does: only a few
    # characters, like "İ", lower-case to two), else None
    lowered: str | None = None
    blocks: list[Block] = field(default_factory=list)
    headings: int = 0
    list_items: int = 0
    code_blocks: int = 0
    tables: int = 0
    rules: int = 0
    images: int = 0
    links: int = 0
    citations: list[int] = field(default_factory=list)  # offsets of links and references


@dataclass(frozen=True, slots=True)
class Phrases:
    """A phrase pattern, run on the lower-cased mask (a case-insensitive scan is 4x slower).

    The pattern has no leading \\b: that is checked in Python, which lets the regex engine
    skip quickly to a possible first letter.
    """

    lower: re.Pattern[str]
    anycase: re.Pattern[str]  # for the rare text whose lower-casing shifts offsets

    @classmethod
    def of(cls, pattern: str) -> Phrases:
        return cls(re.compile(pattern), re.compile(pattern, re.I))

    def finditer(self, layout: Layout) -> Iterator[re.Match[str]]:
        text, pattern = layout.lowered, self.lower
        if text is None:
            text, pattern = layout.masked, self.anycase
        for m in pattern.finditer(text):
            at = m.start()
            if at == 0 or not _is_wordchar(text[at - 1]):
                yield m


def _is_wordchar(char: str) -> bool:
    return char.isalnum() or char == "_"


_ATTRIBUTIONS = Phrases.of(_ATTRIBUTION)


# -- masking and parsing ----------------------------------------------------------------------


def _scan_lines(content: str, layout: Layout) -> list[tuple[int, int]]:
    """Find blocks, headings, lists and code; return the spans to blank (code, markers)."""
    blanks: list[tuple[int, int]] = []
    blocks = layout.blocks
    current: Block | None = None
    fence: str | None = None
    in_table = False
    n = len(content)
    pos = 0
    while True:
        nl = content.find("\n", pos)
        end = n if nl == -1 else nl
        in_row = False
        if fence is not None:
            blanks.append((pos, end))
            m = _FENCE.match(content, pos, end)
            closes = m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence)
            if closes and _BLANK.match(content, m.end(), end):
                fence = None
        elif m := _FENCE.match(content, pos, end):
            current = None
            fence = m.group(1)
            layout.code_blocks += 1
            blanks.append((pos, end))
        elif _BLANK.match(content, pos, end):
            current = None
        elif in_row := _TABLE_ROW.match(content, pos, end) is not None:
            current = None
            layout.tables += 0 if in_table else 1
        elif _ATX_HEADING.match(content, pos, end):
            current = None
            layout.headings += 1
        elif (
            current is not None
            and current.kind == "paragraph"
            and _SETEXT_UNDERLINE.match(content, pos, end)
        ):
            blocks.pop()  # the paragraph above was a heading
            current = None
            layout.headings += 1
        elif _RULE.match(content, pos, end):
            current = None
            layout.rules += 1
        elif m := _LIST_ITEM.match(content, pos, end):
            layout.list_items += 1
            blanks.append((pos, m.end()))
            current = Block(m.end(), end, "list")
            blocks.append(current)
        elif m := _QUOTE_MARKER.match(content, pos, end):
            blanks.append((pos, m.end()))
            if current is None:
                current = Block(m.end(), end, "paragraph")
                blocks.append(current)
            current.end = end
        elif current is None:
            indent = _INDENT.match(content, pos, end)
            current = Block(indent.end() if indent else pos, end, "paragraph")
            blocks.append(current)
        else:
            current.end = end
        in_table = in_row
        if nl == -1:
            return blanks
        pos = nl + 1


def _blank_out(content: str, spans: list[tuple[int, int]]) -> str:
    parts: list[str] = []
    last = 0
    for start, end in spans:  # in order, disjoint, without newlines
        parts += (content[last:start], " " * (end - start))
        last = end
    parts.append(content[last:])
    return "".join(parts)


def _mask_inline(layout: Layout) -> None:
    """Blank inline code, images, link targets and URLs; record where sources are."""
    cites = layout.citations

    def blank(m: re.Match[str]) -> str:
        return " " * (m.end() - m.start())

    def image(m: re.Match[str]) -> str:
        layout.images += 1
        return blank(m)

    def link(m: re.Match[str]) -> str:
        # Keep the link text (it is prose), blank the brackets and the target.
        layout.links += 1
        cites.append(m.start())
        return " " + m.group(1) + " " * (m.end() - m.end(1))

    def url(m: re.Match[str]) -> str:
        text = m.group()
        kept = len(text.rstrip(".,;:!?"))  # a sentence's full stop is not part of the URL
        layout.links += 1
        cites.append(m.start())
        return " " * kept + text[kept:]

    def citation(m: re.Match[str]) -> str:
        cites.append(m.start())
        return blank(m)

    masked = layout.masked
    masked = _INLINE_CODE.sub(blank, masked)
    masked = _IMAGE.sub(image, masked)
    masked = _LINK.sub(link, masked)
    masked = _REF_LINK.sub(link, masked)
    masked = _REF_DEFINITION.sub(blank, masked)
    masked = _AUTOLINK.sub(url, masked)
    masked = _BARE_URL.sub(url, masked)
    masked = _FOOTNOTE.sub(citation, masked)
    masked = _NUMERIC_CITATION.sub(citation, masked)
    masked = _AUTHOR_YEAR.sub(citation, masked)
    layout.masked = masked


def parse(content: str) -> Layout:
    """The layout of a markdown document: its mask, prose blocks, structure and sources."""
    layout = Layout()
    layout.masked = _blank_out(content, _scan_lines(content, layout))
    _mask_inline(layout)
    lowered = layout.masked.lower()
    layout.lowered = lowered if len(lowered) == len(layout.masked) else None
    layout.citations += (m.start() for m in _ATTRIBUTIONS.finditer(layout))
    layout.citations.sort()
    return layout
