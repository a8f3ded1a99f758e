"""Text measures for the offline evaluator: words, sentences, syllables and reading ease;
hedges, claims and strong figures, and whether a source is near; doubled and overused words;
quotable spans.

Everything runs on the mask of a ``markdown_layout.Layout``, so offsets are offsets into the
content. Nothing iterates a hash-ordered set, so the results do not depend on
``PYTHONHASHSEED``; each pass is a regex scan or a loop over words or sentences.
"""

from __future__ import annotations

import operator
import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice

from roast_jobs.domain.markdown_layout import Block, Layout, Phrases

CITATION_REACH = 120  # characters after a sentence where a source still counts for it
OVERUSE_MIN_COUNT = 5
OVERUSE_MIN_SHARE = 0.025  # of all words

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
# A CJK character is a word on its own; other words are runs of letters (with apostrophes).
WORD = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+(?:['\u2019][^\W\d_{_CJK}]+)*")
_CJK_CHAR = re.compile(rf"[{_CJK}]")
# Only at the start of a run of stops: "....x" must not be retried from every dot.
_TERMINATOR = re.compile(r"(?<![.!?…])[.!?…]+[\"'\u201d\u2019)\]*_]*(?=\s|$)")
_NEXT_CHAR = re.compile(r"\s*(\S)")
_ABBREVIATION = re.compile(
    r"(?:^|[^\w.])(?:e\.g|i\.e|etc|vs|cf|mr|mrs|ms|dr|prof|sr|jr|st|fig|al|approx"
    r"|(?:[a-z]\.)*[a-z])$",
    re.I,
)
# Phrase patterns, compiled by Phrases: no leading \b (Phrases checks it in Python), matched
# on lower-cased text.
_HEDGE = (
    r"(?:perhaps|maybe|might|possibly|arguably|presumably|conceivably|apparently|seemingly"
    r"|somewhat|probably|it\s+seems|seems?\s+to|appears?\s+to|sort\s+of|kind\s+of"
    r"|i\s+(?:think|believe|feel|guess|suppose)|in\s+some\s+sense|to\s+some\s+(?:extent|degree)"
    r"|more\s+or\s+less|could\s+be|may\s+be|not\s+necessarily|tends?\s+to)\b"
)
_CLAIM = (
    r"(?:clearly|obviously|undeniably|unquestionably|indisputabl[ey]|certainly|definitely"
    r"|of\s+course|every(?:one|body)\s+knows|it\s+is\s+(?:well[\s-]known|a\s+fact)"
    r"|the\s+fact\s+is|(?:studies|research|science|data)\s+(?:clearly\s+)?"
    r"(?:show|shows|has\s+shown|have\s+shown|proves?)|experts\s+agree|all\s+experts"
    r"|always|never|proven|without\s+(?:a\s+)?doubt|beyond\s+(?:any\s+)?doubt"
    r"|no\s+one\s+(?:can\s+)?den(?:y|ies))\b"
)
# Numbers that carry a claim: percentages, multipliers, money, millions, 10,000-style counts.
# Only from the start of a number ("1,2,3,..." is not retried from every digit).
_STRONG_NUMBER = (
    r"(?=[$€£\d])(?<![\w.,])(?:[$€£]\s?\d[\d,]*(?:\.\d+)?"
    r"|\d[\d,]*(?:\.\d+)?(?:\s?%|\s?(?:percent|per\s+cent|times|fold|million|billion|trillion)\b"
    r"|x\b|-fold\b)"
    r"|\d{1,3}(?:,\d{3})+(?![\d,]))"
)
HEDGES = Phrases.of(_HEDGE)
CLAIMS = Phrases.of(_CLAIM)
STRONG_NUMBERS = Phrases.of(_STRONG_NUMBER)

_VOWEL_GROUP = re.compile(r"[aeiouyàáâãäåæèéêëìíîïòóôõöøùúûüýÿœ]+")
_CYRILLIC_VOWEL_GROUP = re.compile(r"[аеёиоуыэюяіїє]+")

# Membership only (never iterated), so hash order cannot leak into the output.
_STOPWORD_TEXT = """
    a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each even
    few for from further had has have having he her here hers herself him himself his how
    however i if in into is it its itself just let like made make many may me might more
    most much must my myself no nor not now of off on once one only or other our ours
    ourselves out over own per same she should so some such than that the their theirs them
    themselves then there these they this those through thus to too under until up upon us
    very was we well were what when where which while who whom why will with within without
    would yet you your yours yourself yourselves it's don't can't won't isn't that's there's
    i'm we're they're you're
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_DOUBLE_OK = frozenset({"had", "that", "ha", "haha", "bye", "blah", "la", "knock", "tut", "yada"})


@lru_cache(maxsize=16384)
def _syllables(word: str) -> int:
    """Syllables in a lower-cased word: vowel groups, less silent endings (English-centric)."""
    if len(word) == 1 and _CJK_CHAR.match(word):
        return 1  # a CJK character is one syllable
    word = word.replace("\u2019", "'").strip("'")
    if not word.isascii():
        groups = len(_VOWEL_GROUP.findall(word)) + len(_CYRILLIC_VOWEL_GROUP.findall(word))
        return max(1, groups if groups else (len(word) + 2) // 3)
    if len(word) <= 3:
        return 1
    count = len(_VOWEL_GROUP.findall(word))
    if word.endswith("e") and not word.endswith(("le", "ee", "ye")):
        count -= 1  # silent final e: "make"
    elif word.endswith("es") and not word.endswith(("ses", "xes", "zes", "ches", "shes", "ies")):
        count -= 1  # "makes"
    elif word.endswith("ed") and not word.endswith(("ted", "ded")):
        count -= 1  # "walked"
    return max(1, count)


# -- sentences and words ----------------------------------------------------------------------
@dataclass(slots=True)
class _Sentence:
    start: int
    end: int
    words: int


@dataclass(slots=True)
class Prose:
    """The sentences of the prose blocks, with word, syllable and per-word counts."""

    sentences: list[_Sentence] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # of the sentences, to bisect
    words: int = 0
    syllables: int = 0
    # lower-cased word -> uses, in first-use order (sorted before any output)
    counts: Counter[str] = field(default_factory=Counter)
    # sentences where a word follows itself (checked for real doubles later)
    doubled_in: list[int] = field(default_factory=list)


def _is_boundary(masked: str, m: re.Match[str], block: Block) -> bool:
    """Whether a terminator ends a sentence (not "e.g. this", "Dr. Smith", "U.S. law")."""
    nxt = _NEXT_CHAR.match(masked, m.end(), block.end)
    if nxt is None:
        return True
    if nxt.group(1).islower():
        return False
    if m.group() != ".":
        return True
    return _ABBREVIATION.search(masked[max(block.start, m.start() - 8) : m.start()]) is None


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """``(start, end)`` less the white space at either end of ``text[start:end]``."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def measure(layout: Layout) -> Prose:
    """Split the prose blocks into sentences and count words and syllables.

    The per-word work is done by C loops (findall, map, Counter) to stay near 1 ms per
    thousand words; positions are looked up later, only for the words that get a comment.
    """
    masked = layout.masked
    prose = Prose()
    sentences = prose.sentences
    counts = prose.counts
    for block in layout.blocks:
        cuts = [
            m.end()
            for m in _TERMINATOR.finditer(masked, block.start, block.end)
            if _is_boundary(masked, m, block)
        ]
        cuts.append(block.end)
        begin = block.start
        for cut in cuts:
            start, end = _trimmed(masked, begin, cut)
            begin = cut
            words = list(map(str.lower, WORD.findall(masked, start, end)))
            if not words:
                continue
            counts.update(words)
            if any(map(operator.eq, words, islice(words, 1, None))):
                prose.doubled_in.append(len(sentences))
            if block.first_sentence < 0:
                block.first_sentence = len(sentences)
            block.words += len(words)
            sentences.append(_Sentence(start, end, len(words)))
    prose.starts = [s.start for s in sentences]
    prose.words = sum(s.words for s in sentences)
    prose.syllables = sum(n * _syllables(word) for word, n in counts.items())
    return prose


def reading_ease(words: int, sentences: int, syllables: int) -> float:
    if not words or not sentences:
        return 0.0
    return 206.835 - 1.015 * (words / sentences) - 84.6 * (syllables / words)


def ease_label(score: float) -> str:
    for floor, label in (
        (90, "very easy"),
        (80, "easy"),
        (70, "fairly easy"),
        (60, "plain English"),
        (50, "fairly difficult"),
        (30, "difficult"),
    ):
        if score >= floor:
            return label
    return "very difficult"


# -- findings in the text ---------------------------------------------------------------------
def sentence_hits(
    phrases: Phrases, layout: Layout, prose: Prose
) -> dict[int, list[tuple[int, int]]]:
    """Spans of the phrases inside sentences, by sentence index (in order)."""
    hits: dict[int, list[tuple[int, int]]] = {}
    starts, sentences = prose.starts, prose.sentences
    for m in phrases.finditer(layout):
        i = bisect_right(starts, m.start()) - 1
        if i >= 0 and m.end() <= sentences[i].end:
            hits.setdefault(i, []).append(m.span())
    return hits


def quotable_span(content: str, start: int, end: int, max_chars: int) -> tuple[int, int]:
    """The span without white space at either end, cut at a word break to at most about
    ``max_chars``, keeping a combining accent with its letter (empty if nothing is left)."""
    start, end = _trimmed(content, start, end)
    if end - start > max_chars:
        cut = max(
            content.rfind(" ", start, start + max_chars),
            content.rfind("\n", start, start + max_chars),
        )
        end = cut if cut > start + max_chars // 2 else start + max_chars
        start, end = _trimmed(content, start, end)
    while end < len(content) and unicodedata.combining(content[end]):
        end += 1  # keep an accent with its letter
    return start, end


def quoted(content: str, spans: list[tuple[int, int]], lower: bool = False) -> str:
    """The phrases at ``spans``, quoted once each, in order (the first few)."""
    phrases: list[str] = []
    for start, end in spans[:20]:
        phrase = " ".join(content[start:end].split())
        phrase = phrase.lower() if lower else phrase
        if phrase.lower() not in (p.lower() for p in phrases):
            phrases.append(phrase)
    return ", ".join(f'"{p}"' for p in phrases)


def is_sourced(i: int, layout: Layout, prose: Prose) -> bool:
    """Whether a source is cited in sentence ``i`` or after it ("claim.[1]"), up to the next."""
    sentences, cites = prose.sentences, layout.citations
    s = sentences[i]
    limit = s.end + CITATION_REACH
    if i + 1 < len(sentences):
        limit = min(limit, sentences[i + 1].start - 1)
    j = bisect_left(cites, s.start)
    return j < len(cites) and cites[j] <= limit


def doubled_words(content: str, layout: Layout, prose: Prose) -> list[tuple[int, int, str]]:
    """Words that follow themselves with only space between, as (start, end, word), in order."""
    masked = layout.masked
    doubled: list[tuple[int, int, str]] = []
    for i in prose.doubled_in:
        s = prose.sentences[i]
        prev, prev_start, prev_end = "", 0, 0
        for m in WORD.finditer(masked, s.start, s.end):
            word = m.group().lower()
            if (
                word == prev
                and word not in _DOUBLE_OK
                and not _CJK_CHAR.match(word)
                and content[prev_end : m.start()].isspace()
            ):
                doubled.append((prev_start, m.end(), word))
            prev, prev_start, prev_end = word, m.start(), m.end()
    return doubled


def overused_words(prose: Prose, exclude: frozenset[str]) -> list[tuple[str, int]]:
    """(word, uses) for the words used too often (not stopwords or ``exclude``), most first."""
    total = prose.words
    return sorted(
        (
            (word, n)
            for word, n in prose.counts.items()
            if n >= OVERUSE_MIN_COUNT
            and n / total >= OVERUSE_MIN_SHARE
            and len(word) > 2
            and word not in _STOPWORDS
            and word not in exclude
        ),
        key=lambda item: (-item[1], item[0]),
    )


def word_uses(word: str, layout: Layout, prose: Prose) -> list[tuple[int, int]]:
    """Spans of ``word`` as a whole word inside sentences (the first 1,000 are enough)."""
    sentences = prose.sentences
    text, flags = layout.lowered, 0
    if text is None:
        text, flags = layout.masked, re.I
    spans: list[tuple[int, int]] = []
    for m in re.finditer(re.escape(word), text, flags):
        start, end = m.span()
        before = text[max(0, start - 2) : start]
        after = text[end : end + 2]
        if (
            before[-1:].isalpha()
            or (before[-1:] in "'\u2019" and before[:1].isalpha())
            or after[:1].isalpha()
            or (after[:1] in "'\u2019" and after[1:].isalpha())
        ):
            continue  # part of a longer word
        i = bisect_right(prose.starts, start) - 1
        if i >= 0 and end <= sentences[i].end:
            spans.append((start, end))
            if len(spans) == 1000:
                break
    return spans


def overuse_span(word: str, layout: Layout, prose: Prose, max_chars: int) -> tuple[int, int] | None:
    """Where to point at an overused word: the tightest cluster of three uses, where it grates
    most (or one of them, if the three span more than ``max_chars``); None if it has no use."""
    uses = word_uses(word, layout, prose)
    if not uses:
        return None
    start, end = uses[0]
    if len(uses) >= 3:
        k = min(range(len(uses) - 2), key=lambda k: (uses[k + 2][0] - uses[k][0], k))
        if uses[k + 2][1] - uses[k][0] <= max_chars:
            start, end = uses[k][0], uses[k + 2][1]
        else:
            start, end = uses[k]
    return start, end
