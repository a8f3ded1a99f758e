"""The default evaluator: an offline, deterministic, heuristic review of a markdown document.

No network, clock or randomness, and nothing iterates a hash-ordered set: the same document
and agent always give the same output, whatever ``PYTHONHASHSEED`` is. Every pass is a single
regex scan or a loop over lines, words or sentences, so the cost grows linearly with the text.

Offsets are Python ``str`` indexes (code points) into ``document.content``. The analysis runs
on a *masked* copy of the content, the same length, in which code, URLs and markdown syntax
are blanked out with spaces; so a span found in the mask is the same span of the content.

Grade (0-100), from four subscores, each clamped to 0-100::

    readability R = Flesch reading ease - 60 * share of sentences over 35 words
    structure   S = 100 - 30 [>=300 words, no heading] - 30 [>=150 words, one block]
                        - 40 * share of paragraphs over 150 words - 10 [>=300 words, no list/table]
    evidence    E = 100 - 150 * unsupported claims per sentence - 20 [>=300 words, no link/citation]
    style       C = 100 - 120 * hedges per sentence - 10 * doubled words - 10 * overused words (<=3)
    grade = round(clamp(sum(w * sub) / sum(w) - 0.3 * max(0, 100 - words)))

with weights R .30, S .20, E .25, C .25, each doubled when the agent's instructions ask for it
(clarity/readability, structure/organisation, evidence/sources, concision/hedging/style); the
instructions also add 15 to the importance of those comments. Findings on the same span are
merged into one comment; the MAX_COMMENTS most important are kept, in document order.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from roast_jobs.domain.evaluator import (
    AgentInput,
    Comment,
    DocumentInput,
    EvaluationOutput,
    Highlight,
)
from roast_jobs.domain.markdown_layout import Block, parse
from roast_jobs.domain.text_metrics import (
    CLAIMS,
    HEDGES,
    STRONG_NUMBERS,
    WORD,
    doubled_words,
    ease_label,
    is_sourced,
    measure,
    overuse_span,
    overused_words,
    quotable_span,
    quoted,
    reading_ease,
    sentence_hits,
)

MAX_COMMENTS = 20
MAX_PER_KIND = 6  # so one kind of finding cannot crowd out the others (a soft cap)
MAX_QUOTE = 300  # characters of a highlight
PREFIX_CHARS = 30
LONG_SENTENCE = 35  # words
VERY_LONG_SENTENCE = 60
LONG_PARAGRAPH = 150  # words
_LEVEL_ORDER = ("error", "warning", "info", "success")  # most severe first

BASE_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("readability", 0.30),
    ("structure", 0.20),
    ("evidence", 0.25),
    ("style", 0.25),
)
# What in the agent's instructions makes a category count double (a fixed order: deterministic).
EMPHASIS_WORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("readability", re.compile(r"\b(?:clarity|clear|readab|plain language|jargon)", re.I)),
    ("structure", re.compile(r"\b(?:structur|organi[sz]|format|heading|layout)", re.I)),
    (
        "evidence",
        re.compile(r"\b(?:evidence|citation|cite|sources?\b|claims?\b|epistemic|rigou?r)", re.I),
    ),
    ("style", re.compile(r"\b(?:concis|hedg|wordy|verbos|repetit|style|tone)", re.I)),
)


@dataclass(slots=True)
class _Candidate:
    start: int
    end: int
    kind: str
    category: str
    level: str
    importance: int
    header: str
    description: str


def _clamp(value: float, low: float = 0.0, high: float = 100.0) -> float:
    return min(high, max(low, value))


def _emphasis(instructions: str | None) -> tuple[str, ...]:
    if not instructions:
        return ()
    return tuple(name for name, pattern in EMPHASIS_WORDS if pattern.search(instructions))


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


# -- the evaluator ----------------------------------------------------------------------------
class OfflineEvaluator:
    """Readability, structure, hedging, unsupported claims and repetition, with no network."""

    def evaluate(self, document: DocumentInput, agent: AgentInput) -> EvaluationOutput:
        return _Run(document, agent).output()


class _Run:
    """One evaluation: parse, measure, find issues, then write the output."""

    def __init__(self, document: DocumentInput, agent: AgentInput) -> None:
        self.document = document
        self.agent = agent
        self.content = document.content
        self.emphasis = _emphasis(agent.primary_instructions)
        self.layout = parse(self.content)
        self.title_words = frozenset(w.lower() for w in WORD.findall(document.title))
        self.prose = measure(self.layout)
        self.candidates: list[_Candidate] = []
        self.doubled: list[tuple[int, int, str]] = []
        self.hedges = self.unsupported = self.long_sentences = self.long_paragraphs = 0
        self.paragraphs: list[Block] = []
        self.overused: list[tuple[str, int]] = []
        self._find_long_sentences()
        self._find_long_paragraphs()
        self._find_hedges()
        self._find_unsupported()
        self._find_repetition()
        self.scores = self._subscores()
        self.grade = self._grade()

    # -- findings --------------------------------------------------------------------------
    def _add(
        self,
        start: int,
        end: int,
        kind: str,
        category: str,
        level: str,
        importance: int,
        header: str,
        description: str,
    ) -> None:
        if category in self.emphasis:
            importance += 15
        self.candidates.append(
            _Candidate(start, end, kind, category, level, min(100, importance), header, description)
        )

    def _find_long_sentences(self) -> None:
        sentences = self.prose.sentences
        average = self.prose.words / len(sentences) if sentences else 0.0
        for s in sentences:
            if s.words > LONG_SENTENCE:
                self.long_sentences += 1
                self._add(
                    s.start,
                    s.end,
                    "long-sentence",
                    "readability",
                    "warning" if s.words > VERY_LONG_SENTENCE else "info",
                    min(90, 20 + s.words),
                    f"Long sentence ({s.words} words)",
                    f"This sentence runs {s.words} words (the document averages {average:.0f}). "
                    f"Sentences over {LONG_SENTENCE} words are hard to follow: split it where "
                    "the thought turns, at a conjunction or a semicolon.",
                )

    def _find_long_paragraphs(self) -> None:
        self.paragraphs = [b for b in self.layout.blocks if b.kind == "paragraph" and b.words]
        for block in self.paragraphs:
            if block.words > LONG_PARAGRAPH:
                self.long_paragraphs += 1
                first = self.prose.sentences[block.first_sentence]
                self._add(
                    first.start,
                    first.end,
                    "long-paragraph",
                    "structure",
                    "info",
                    45,
                    f"Long paragraph ({block.words} words)",
                    f"The paragraph starting here runs {block.words} words. Break it up so each "
                    "paragraph makes one point, or turn a sequence of points into a list.",
                )

    def _find_hedges(self) -> None:
        for i, spans in sentence_hits(HEDGES, self.layout, self.prose).items():
            self.hedges += len(spans)
            s = self.prose.sentences[i]
            self._add(
                s.start,
                s.end,
                "hedge",
                "style",
                "info",
                min(70, 30 + 15 * (len(spans) - 1)),
                "Stacked hedging" if len(spans) > 1 else "Hedging",
                f"Hedge words ({quoted(self.content, spans, lower=True)}) soften this sentence. "
                "State the claim directly, or say how confident you are and why.",
            )

    def _find_unsupported(self) -> None:
        claims = sentence_hits(CLAIMS, self.layout, self.prose)
        numbers = sentence_hits(STRONG_NUMBERS, self.layout, self.prose)
        for i in sorted(claims.keys() | numbers.keys()):
            if is_sourced(i, self.layout, self.prose):
                continue
            s = self.prose.sentences[i]
            self.unsupported += 1
            is_number = i in numbers
            self._add(
                s.start,
                s.end,
                "unsupported",
                "evidence",
                "warning",
                70 if is_number and i in claims else 60,
                "Figure without a source" if is_number else "Unsupported claim",
                f"{quoted(self.content, claims.get(i, []) + numbers.get(i, []))}: this asserts "
                "more than the text shows, and no link or citation is nearby. Add a source, or "
                "soften the claim to what you can support.",
            )

    def _find_repetition(self) -> None:
        self.doubled = doubled_words(self.content, self.layout, self.prose)
        # Equal importance, so only the first few could ever be kept.
        for start, end, word in self.doubled[:MAX_COMMENTS]:
            self._add(
                start,
                end,
                "doubled-word",
                "style",
                "error",
                70,
                f'Repeated word "{word}"',
                f'"{word}" appears twice in a row; probably a typo.',
            )
        self.overused = overused_words(self.prose, self.title_words)
        for word, count in self.overused[:3]:
            span = overuse_span(word, self.layout, self.prose, MAX_QUOTE)
            if span is None:
                continue
            self._add(
                *span,
                "overused-word",
                "style",
                "info",
                35,
                f'Overused word "{word}"',
                f'"{word}" appears {count} times ({count / self.prose.words:.1%} of all words). '
                "Vary the wording, or cut the uses that add nothing.",
            )

    # -- scores ----------------------------------------------------------------------------
    def _subscores(self) -> dict[str, float]:
        layout, prose = self.layout, self.prose
        words, n_sentences = prose.words, max(1, len(prose.sentences))
        self.ease = reading_ease(words, len(prose.sentences), prose.syllables)
        readability = _clamp(self.ease) - 60 * self.long_sentences / n_sentences
        structure = 100.0
        if words >= 300 and not layout.headings:
            structure -= 30
        if words >= 150 and len(layout.blocks) <= 1:
            structure -= 30
        if self.paragraphs:
            structure -= 40 * self.long_paragraphs / len(self.paragraphs)
        if words >= 300 and not (layout.list_items or layout.tables):
            structure -= 10
        evidence = 100 - 150 * self.unsupported / n_sentences
        if words >= 300 and not layout.citations:
            evidence -= 20
        style = (
            100
            - 120 * self.hedges / n_sentences
            - 10 * len(self.doubled)
            - 10 * min(3, len(self.overused))
        )
        if not words:
            readability = structure = evidence = style = 0.0
        return {
            "readability": _clamp(readability),
            "structure": _clamp(structure),
            "evidence": _clamp(evidence),
            "style": _clamp(style),
        }

    def _weights(self) -> list[tuple[str, float]]:
        return [(name, w * (2 if name in self.emphasis else 1)) for name, w in BASE_WEIGHTS]

    def _grade(self) -> int:
        weights = self._weights()
        mean = sum(w * self.scores[name] for name, w in weights) / sum(w for _, w in weights)
        mean -= 0.3 * max(0, 100 - self.prose.words)
        return int(_clamp(mean) + 0.5)

    # -- output ----------------------------------------------------------------------------
    def _highlight(self, start: int, end: int) -> Highlight | None:
        content = self.content
        start, end = quotable_span(content, start, end, MAX_QUOTE)
        if start >= end:
            return None
        return Highlight(
            start_offset=start,
            end_offset=end,
            quoted_text=content[start:end],
            prefix=content[max(0, start - PREFIX_CHARS) : start],
        )

    def _merged(self) -> list[_Candidate]:
        """One candidate per span: a sentence that is long, hedged and unsourced gets one
        comment that says all three, not three comments on top of each other."""
        by_span: dict[tuple[int, int], list[_Candidate]] = {}
        for c in self.candidates:
            by_span.setdefault((c.start, c.end), []).append(c)
        merged: list[_Candidate] = []
        for group in by_span.values():
            group.sort(key=lambda c: (-c.importance, c.kind))
            first = group[0]
            if len(group) > 1:
                first = dataclasses.replace(
                    first,
                    level=min((c.level for c in group), key=_LEVEL_ORDER.index),
                    header=" · ".join(c.header for c in group),
                    description=" ".join(c.description for c in group),
                )
            merged.append(first)
        return merged

    def _comments(self) -> tuple[Comment, ...]:
        ranked = sorted(self._merged(), key=lambda c: (-c.importance, c.start, c.end, c.kind))
        # At most MAX_PER_KIND of a kind while other kinds wait, then the best of the rest.
        kept: list[_Candidate] = []
        waiting: list[_Candidate] = []
        per_kind: dict[str, int] = {}
        for c in ranked:
            if per_kind.get(c.kind, 0) < MAX_PER_KIND:
                per_kind[c.kind] = per_kind.get(c.kind, 0) + 1
                kept.append(c)
            else:
                waiting.append(c)
        kept = (kept + waiting)[:MAX_COMMENTS]
        placed = [(h, c) for c in kept if (h := self._highlight(c.start, c.end)) is not None]
        placed.sort(key=lambda hc: (hc[0].start_offset, hc[0].end_offset, hc[1].kind))
        return tuple(
            Comment(
                description=c.description,
                highlight=h,
                header=c.header,
                level=c.level,
                importance=c.importance,
            )
            for h, c in placed
        )

    def _metrics_table(self) -> list[str]:
        layout, prose = self.layout, self.prose
        n = len(prose.sentences)
        average = prose.words / n if n else 0.0
        longest = max((s.words for s in prose.sentences), default=0)
        overused = ", ".join(f'"{w}" ({c})' for w, c in self.overused[:5]) or "none"
        rows = [
            ("Words", f"{prose.words:,}"),
            ("Sentences", f"{n:,}"),
            ("Average sentence length", f"{average:.1f} words"),
            ("Longest sentence", f"{longest} words"),
            (f"Sentences over {LONG_SENTENCE} words", f"{self.long_sentences:,}"),
            ("Flesch reading ease", f"{self.ease:.1f} ({ease_label(self.ease)})" if n else "n/a"),
            (
                "Headings / paragraphs / list items",
                f"{layout.headings} / {len(self.paragraphs)} / {layout.list_items}",
            ),
            ("Links / sources cited", f"{layout.links} / {len(layout.citations)}"),
            (
                "Code blocks / tables / images",
                f"{layout.code_blocks} / {layout.tables} / {layout.images}",
            ),
            ("Hedges", f"{self.hedges} ({self.hedges / max(1, n):.2f} per sentence)"),
            ("Unsupported claims", f"{self.unsupported}"),
            ("Doubled words", f"{len(self.doubled)}"),
            ("Overused words", overused),
        ]
        return ["| Metric | Value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]

    def _notes(self) -> list[str]:
        layout, prose = self.layout, self.prose
        if not prose.words:
            return ["No prose to evaluate: the document is empty or has only markup and code."]
        notes: list[str] = []
        if prose.words >= 300 and not layout.headings:
            notes.append("No headings: a reader cannot skim the argument's shape.")
        if prose.words >= 150 and len(layout.blocks) <= 1:
            notes.append("The text is one block: split it into paragraphs.")
        if self.long_paragraphs:
            notes.append(f"Paragraphs over {LONG_PARAGRAPH} words: {self.long_paragraphs}.")
        if prose.words >= 300 and not layout.citations:
            notes.append("No links or citations: claims rest on the author's word.")
        if self.long_sentences:
            notes.append(f"Sentences over {LONG_SENTENCE} words: {self.long_sentences}.")
        if self.unsupported:
            notes.append(
                f"Claims or figures without a source in {_plural(self.unsupported, 'sentence')}."
            )
        if self.hedges:
            notes.append(f"Hedging: {_plural(self.hedges, 'hedge word')} in all.")
        if self.doubled:
            notes.append(f"Doubled words (likely typos): {len(self.doubled)}.")
        if not notes:
            notes.append("No major issues found by these heuristics.")
        return notes

    def _analysis(self) -> str:
        title = " ".join(self.document.title.split()) or "Untitled"
        lines = [f"## Offline analysis of “{title}”", "", *self._metrics_table(), ""]
        lines += [
            "### Scores",
            "",
            "| Readability | Structure | Evidence | Style |",
            "|---|---|---|---|",
        ]
        lines.append("| " + " | ".join(f"{self.scores[n]:.0f}" for n, _ in BASE_WEIGHTS) + " |")
        lines.append("")
        if self.emphasis:
            emphasis = ", ".join(self.emphasis)
            lines.append(f"Emphasis from the agent's instructions: {emphasis} (weight doubled).")
            lines.append("")
        if self.agent.provides_grades:
            weights = ", ".join(f"{n} {w:g}" for n, w in self._weights())
            lines.append(
                f"Grade: **{self.grade}/100** (weighted mean of the scores: {weights}; "
                "less 0.3 per word under 100 words)."
            )
            lines.append("")
        lines += ["### Notes", "", *(f"- {note}" for note in self._notes())]
        return "\n".join(lines)

    def _summary(self) -> str:
        prose = self.prose
        if not prose.words:
            return "The document has no prose to evaluate."
        issues = [
            (self.long_sentences, "long sentence"),
            (self.unsupported, "unsupported claim"),
            (self.hedges, "hedge"),
            (len(self.doubled), "doubled word"),
            (len(self.overused), "overused word"),
            (self.long_paragraphs, "long paragraph"),
        ]
        found = [_plural(n, what) for n, what in issues if n]
        found_text = "; ".join(found) if found else "no major issues"
        grade = f" Grade {self.grade}/100." if self.agent.provides_grades else ""
        return (
            f"A {prose.words:,}-word document that reads as {ease_label(self.ease)} "
            f"(Flesch {self.ease:.0f}): {found_text}.{grade}"
        )

    def _log(self, kept: int) -> tuple[str, ...]:
        layout, prose = self.layout, self.prose
        n = len(prose.sentences)
        longest = max((s.words for s in prose.sentences), default=0)
        return (
            f"offline evaluator: {len(self.content):,} characters, {prose.words:,} words, "
            f"{n:,} sentences in {len(layout.blocks):,} prose blocks",
            f"structure: {layout.headings} headings, {len(self.paragraphs)} paragraphs, "
            f"{layout.list_items} list items, {layout.links} links, "
            f"{len(layout.citations)} sources, {layout.code_blocks} code blocks",
            f"readability: Flesch {self.ease:.1f}, average sentence "
            f"{prose.words / n if n else 0:.1f} words, longest {longest}",
            f"style: {self.hedges} hedges, {self.unsupported} unsupported claims, "
            f"{len(self.doubled)} doubled words, {len(self.overused)} overused words",
            f"comments: {kept} kept of {len(self.candidates)} findings"
            + (f"; emphasis: {', '.join(self.emphasis)}" if self.emphasis else ""),
            f"grade: {self.grade}"
            if self.agent.provides_grades
            else "grade: none (agent gives no grades)",
        )

    def output(self) -> EvaluationOutput:
        comments = self._comments()
        return EvaluationOutput(
            grade=self.grade if self.agent.provides_grades else None,
            summary=self._summary(),
            analysis=self._analysis(),
            comments=comments,
            self_critique=(
                "Heuristic, offline review: reading ease assumes English, claims are flagged by "
                "their wording rather than checked, and the markdown parsing is approximate."
            ),
            log=self._log(len(comments)),
        )
