"""The offline evaluator: deterministic, offsets always valid, grades that mean something."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import time

import pytest

from roast_jobs.config import Settings
from roast_jobs.domain.evaluator import (
    AgentInput,
    DocumentInput,
    EvaluationOutput,
    Evaluator,
    EvaluatorConfigError,
    load_evaluator,
)
from roast_jobs.domain.offline_evaluator import MAX_COMMENTS, PREFIX_CHARS, OfflineEvaluator

DEFAULT_SPEC = "roast_jobs.domain.offline_evaluator:OfflineEvaluator"
AGENT = AgentInput(agent_id="agent-1", version=1, name="Reviewer")
LEVELS = {"error", "warning", "info", "success"}

GOOD = """# Why adults need sleep

Sleep helps the brain store what it learned during the day. Adults need seven to nine
hours a night, according to the [CDC](https://www.cdc.gov/sleep/about/index.html).

## What goes wrong without it

A short night makes people slower to react. In one study, 24 hours awake impaired drivers
about as much as a blood alcohol level of 0.10% ([Dawson and Reid, 1997](https://doi.org/10.1038/40775)).

Over months, short sleep is linked to weight gain and heart disease [1].

## What helps

- Go to bed at the same time each night.
- Keep the bedroom dark and cool.
- Stop caffeine after lunch.

## Sources

[1]: https://example.org/sleep-review
"""

BAD = (
    "I think that perhaps the the whole question of rest is arguably something that might "
    "matter quite a lot, and it seems that everyone knows that rest is obviously always the "
    "key thing and studies show that 95% of people who rest more or less better are maybe "
    "possibly going to be sort of happier in a way that is kind of hard to describe but which "
    "perhaps could be described as rest rest being the most important thing, which everyone "
    "knows is clearly true, and which apparently nobody who has ever thought about rest would "
    "ever deny, because rest is never optional and rest is always necessary and rest is the "
    "foundation of everything that people do when they are not resting, although it seems "
    "that resting might be somewhat overrated by those who presumably rest too much. "
) * 4


def document(content: str, title: str = "A document") -> DocumentInput:
    return DocumentInput(document_id="doc-1", version=1, title=title, content=content)


def evaluate(
    content: str, agent: AgentInput = AGENT, title: str = "A document"
) -> EvaluationOutput:
    out = OfflineEvaluator().evaluate(document(content, title), agent)
    check_output(content, out)
    return out


def as_json(out: EvaluationOutput) -> str:
    return json.dumps(dataclasses.asdict(out), sort_keys=True, ensure_ascii=False)


def check_output(content: str, out: EvaluationOutput) -> None:
    """The invariants every output keeps, whatever the content."""
    assert out.grade is None or (isinstance(out.grade, int) and 0 <= out.grade <= 100)
    assert out.summary and out.analysis and out.log
    assert len(out.comments) <= MAX_COMMENTS
    positions = [(c.highlight.start_offset, c.highlight.end_offset) for c in out.comments]
    assert positions == sorted(set(positions))  # in order, one comment per span
    for c in out.comments:
        h = c.highlight
        assert 0 <= h.start_offset < h.end_offset <= len(content)
        assert content[h.start_offset : h.end_offset] == h.quoted_text
        assert h.prefix == content[max(0, h.start_offset - PREFIX_CHARS) : h.start_offset]
        assert h.quoted_text == h.quoted_text.strip()
        assert c.level in LEVELS
        assert c.importance is not None and 0 <= c.importance <= 100
        assert c.header and c.description


# -- generated texts --------------------------------------------------------------------------
PIECES = [
    "The model works well.",
    "Perhaps this might be true, it seems.",
    "Clearly everyone knows this is always the case.",
    "Studies show that 73% of people agree.",
    "Prices rose 3x to $1,200,000 in 2020.",
    "This is the the end.",
    "They had had enough.",
    "See https://example.com/a/b?c=d. It helps.",
    'Read [the paper](https://arxiv.org/abs/1234.5678 "title") first.',
    "Use `print(x)` in code.",
    "Dr. Smith met the U.S. team, e.g. at noon.",
    "naïve café résumé",
    "cafe\u0301 with a combining accent",
    "İstanbul İİİ DİYARBAKIR",  # lower-casing changes the length
    "東京は大きい都市です。日本語の文。",
    "Привет мир, это тест.",
    "مرحبا بالعالم",
    "emoji 🙂👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "zero\u200bwidth\u200djoiner",
    "ﬁnance ﬂow ß ǅ",  # ligatures and titlecase letters
    "tab\tseparated\tvalues",
    "\x00\x07 control \x1b[0m chars",
    "line\u2028separator\u2029paragraph",
    "(Smith et al., 2019) found it [2].",
    "A footnote.[^1]",
    "supercalifragilisticexpialidocious" * 5,
    "!!! ??? ... …",
    "word " * 80 + ".",
    "' \" \u2019 \u201d « »",
    "",
]
BLOCKS = [
    "\n\n",
    "\n",
    "\r\n",
    "\r\n\r\n",
    "\r",
    "\n# Heading\n",
    "\nTitle\n=====\n",
    "\n- item one\n- item two\n",
    "\n1. first\n2) second\n",
    "\n> quoted text\n> more\n",
    "\n```python\nperhaps = clearly(the the)\n```\n",
    "\n~~~\nunterminated fence\n",
    "\n| a | b |\n|---|---|\n| 1 | 2 |\n",
    "\n---\n",
    "\n[1]: https://example.org/ref\n",
    "\n![image](https://example.org/x.png)\n",
    "   ",
]


def generated_text(seed: int) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    for _ in range(rng.randint(0, 40)):
        parts.append(rng.choice(PIECES))
        parts.append(rng.choice(BLOCKS) if rng.random() < 0.3 else rng.choice([" ", "  ", ""]))
    text = "".join(parts)
    if rng.random() < 0.2:  # a random slice: offsets in the middle of anything
        a, b = sorted(rng.randrange(len(text) + 1) for _ in range(2))
        text = text[a:b]
    return text


def long_text(words: int, seed: int = 1) -> str:
    """Plausible markdown of about ``words`` words."""
    rng = random.Random(seed)
    words_text = """the a of and to in is that it was for on are with as this be at by from
        evidence model people study results data shows growth policy risk perhaps clearly
        might always 40% million research suggests however"""
    vocab = words_text.split()
    out: list[str] = []
    n = 0
    while n < words:
        if rng.random() < 0.03:
            out.append(f"\n\n## Section {n}\n\n")
        if rng.random() < 0.02:
            out.append("\n\n- one item here\n- another item there\n\n")
        k = rng.randint(4, 45)
        sentence = " ".join(rng.choice(vocab) for _ in range(k))
        if rng.random() < 0.1:
            sentence += f" [source](https://example.org/{n})"
        out.append(sentence.capitalize() + rng.choice([". ", "? ", "! ", ".\n", ".\n\n"]))
        n += k
    return "".join(out)


# -- determinism ------------------------------------------------------------------------------
DETERMINISM_CASES = [
    ("Good", GOOD, None),
    ("Bad", BAD, "Focus on evidence and clarity."),
    ("Ties", "alpha beta gamma delta " * 30 + "epsilon. " * 3, None),
    ("Mixed", generated_text(7) + generated_text(8), "Check the structure."),
    ("Empty", "", None),
]


def _run_cases(cases: list[tuple[str, str, str | None]]) -> list[str]:
    return [
        as_json(
            OfflineEvaluator().evaluate(
                document(content, title),
                dataclasses.replace(AGENT, primary_instructions=instructions),
            )
        )
        for title, content, instructions in cases
    ]


def test_same_input_same_output() -> None:
    first = _run_cases(DETERMINISM_CASES)
    assert _run_cases(DETERMINISM_CASES) == first
    out = OfflineEvaluator().evaluate(document(GOOD), AGENT)
    assert out == OfflineEvaluator().evaluate(document(GOOD), AGENT)
    assert repr(out) == repr(OfflineEvaluator().evaluate(document(GOOD), AGENT))


SUBPROCESS_SCRIPT = """
import json, sys
from tests.test_domain_evaluator import _run_cases
cases = [tuple(case) for case in json.load(sys.stdin)]
print(json.dumps(_run_cases(cases)))
"""


@pytest.mark.parametrize("hash_seed", ["0", "1", "4242"])
def test_same_output_under_another_hash_seed(hash_seed: str) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCRIPT],
        input=json.dumps(DETERMINISM_CASES),
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        timeout=120,
        check=True,
    )
    assert json.loads(result.stdout) == _run_cases(DETERMINISM_CASES)


# -- offsets and edge cases -------------------------------------------------------------------
@pytest.mark.parametrize("batch", range(6))
def test_offsets_hold_for_generated_texts(batch: int) -> None:
    for seed in range(batch * 100, batch * 100 + 100):
        text = generated_text(seed)
        evaluate(text)
        evaluate(text, dataclasses.replace(AGENT, primary_instructions="evidence, structure"))


@pytest.mark.parametrize(
    "content", ["", " ", "\n\n\n", "\r\n\t  \r\n", "\u00a0\u2003\u3000", "\t"], ids=repr
)
def test_empty_or_blank_content(content: str) -> None:
    out = evaluate(content)
    assert out.comments == ()
    assert out.grade is not None and out.grade <= 10
    assert "no prose" in out.summary


def test_markup_only_content() -> None:
    out = evaluate(
        "# Title\n\n```\nperhaps the the clearly\n```\n\n---\n![x](https://x.org/i.png)\n"
    )
    assert out.comments == ()
    assert out.grade == 0


def test_crlf_content() -> None:
    text = GOOD.replace("\n", "\r\n") + "\r\nThis is the the end.\r\n"
    out = evaluate(text)
    doubled = [c for c in out.comments if c.header == 'Repeated word "the"']
    assert [c.highlight.quoted_text for c in doubled] == ["the the"]
    # CRLF and LF give the same findings
    lf = evaluate(text.replace("\r\n", "\n"))
    assert [c.header for c in out.comments] == [c.header for c in lf.comments]
    assert out.grade == lf.grade


def test_very_long_content() -> None:
    text = long_text(100_000)
    start = time.perf_counter()
    out = evaluate(text)
    elapsed = time.perf_counter() - start
    assert len(out.comments) == MAX_COMMENTS
    assert elapsed < 10, f"{elapsed:.1f}s for 100,000 words"


def test_cost_is_about_linear() -> None:
    def best_time(text: str, runs: int) -> float:
        evaluator = OfflineEvaluator()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            evaluator.evaluate(document(text), AGENT)
            times.append(time.perf_counter() - start)
        return min(times)

    small = best_time(long_text(1_000), 9)
    large = best_time(long_text(50_000), 2)
    assert small < 0.05, f"{small * 1000:.1f} ms for 1,000 words"
    assert large < 50 * small * 4, f"{large:.2f}s for 50,000 words vs {small * 1000:.1f} ms"


@pytest.mark.parametrize(
    "text",
    [
        "word [ ( ` < http " * 20_000,  # unmatched brackets everywhere
        "[" * 100_000,
        "a" + "." * 100_000 + "b",
        ". " * 50_000,
        "1," * 100_000,
        "(a 2020 " * 20_000,
        "`a" * 100_000,
        "> " * 50_000 + "x",
        "the " * 50_000,
    ],
    ids=lambda text: repr(text[:12]),
)
def test_pathological_input_stays_linear(text: str) -> None:
    start = time.perf_counter()
    evaluate(text)
    assert time.perf_counter() - start < 5


# -- findings ---------------------------------------------------------------------------------
def comments_by_header(out: EvaluationOutput, prefix: str) -> list[str]:
    return [c.highlight.quoted_text for c in out.comments if (c.header or "").startswith(prefix)]


def test_long_sentence() -> None:
    long_sentence = "This sentence " + "goes on and " * 20 + "finally stops."
    out = evaluate(f"A short one. {long_sentence} Another short one.")
    assert comments_by_header(out, "Long sentence (") == [long_sentence]
    assert "Longest sentence | 64 words" in out.analysis


def test_doubled_words() -> None:
    out = evaluate("This is the the end. They had had enough. It ends the. The next one.")
    assert comments_by_header(out, "Repeated word") == ["the the"]
    (comment,) = [c for c in out.comments if c.header == 'Repeated word "the"']
    assert comment.level == "error"
    assert comment.highlight.prefix == "This is "


def test_doubled_words_across_markup_are_not_doubled() -> None:
    out = evaluate("Use the `x` the right way. Read the [docs](https://x.org) the end.")
    assert comments_by_header(out, "Repeated word") == []


def test_hedging() -> None:
    out = evaluate("Perhaps this might work. This works. It seems fine.")
    assert comments_by_header(out, "Stacked hedging") == ["Perhaps this might work."]
    assert comments_by_header(out, "Hedging") == ["It seems fine."]
    assert "| Hedges | 3 " in out.analysis


def test_hedges_in_code_and_urls_do_not_count() -> None:
    out = evaluate(
        "Fine text.\n\n```\nperhaps maybe might\n```\n\nSee https://x.org/perhaps-maybe."
    )
    assert "| Hedges | 0 " in out.analysis


def test_unsupported_claims_and_figures() -> None:
    out = evaluate(
        "Studies show that 73% of people agree. Clearly this is the best. "
        "Prices rose 40% last year ([BLS](https://www.bls.gov/cpi/)). "
        "Everyone knows the answer, according to the survey. In 2020 we met."
    )
    assert comments_by_header(out, "Figure without a source") == [
        "Studies show that 73% of people agree."
    ]
    assert comments_by_header(out, "Unsupported claim") == ["Clearly this is the best."]
    (figure,) = [c for c in out.comments if c.header == "Figure without a source"]
    assert '"Studies show", "73%"' in figure.description


def test_citation_just_after_a_claim_supports_it() -> None:
    out = evaluate("Research shows sleep matters.[^1]\n\n[^1]: Walker, 2017.")
    assert comments_by_header(out, "Unsupported claim") == []


def test_overused_word() -> None:
    text = (
        "The framework helps. We built the framework so the framework would scale. "
        "A framework needs care, and a good framework pays off. Teams like it. "
        "They use it daily and write notes about it. Notes help new people. "
    )
    out = evaluate(text)
    assert comments_by_header(out, 'Overused word "framework"') == [
        "framework so the framework would scale. A framework"
    ]
    # a word of the title is the topic, not repetition
    out = evaluate(text, title="Our framework")
    assert comments_by_header(out, "Overused word") == []


def test_structure_counts() -> None:
    out = evaluate(GOOD)
    log = "\n".join(out.log)
    assert "4 headings" in log
    assert "3 list items" in log
    assert "2 links" in log
    assert "| Headings / paragraphs / list items | 4 / 3 / 3 |" in out.analysis


def test_urls_and_code_are_not_words() -> None:
    out = evaluate("See https://example.com/a/b/c/d/e. Run `make all now` today.")
    assert "| Words | 3 |" in out.analysis  # See, Run, today


def test_abbreviations_do_not_end_sentences() -> None:
    out = evaluate("Dr. Smith met the U.S. team, e.g. at noon. Then they left.")
    assert "| Sentences | 2 |" in out.analysis


def test_unicode_and_non_latin_text() -> None:
    text = "İstanbul'da İİİ perhaps the the city. 東京は大きい都市です。 Clearly café naïve."
    out = evaluate(text)
    assert comments_by_header(out, "Repeated word") == ["the the"]
    assert "Unsupported claim" in [c.header for c in out.comments]


def test_comment_cap_and_spread() -> None:
    text = " ".join(f"Perhaps the the claim {i} is clearly always true." for i in range(200))
    out = evaluate(text)
    assert len(out.comments) == MAX_COMMENTS
    assert len({c.header for c in out.comments}) > 1  # one kind cannot take every slot


# -- grades -----------------------------------------------------------------------------------
def test_grades_rank_a_clear_cited_text_above_a_rambling_one() -> None:
    good, bad = evaluate(GOOD), evaluate(BAD)
    assert good.grade is not None and bad.grade is not None
    assert good.grade >= 70, good.analysis
    assert bad.grade <= 30, bad.analysis
    assert good.grade - bad.grade >= 40
    assert len(bad.comments) > len(good.comments)
    headers = " · ".join(c.header or "" for c in bad.comments)
    for finding in ("Long sentence", "Repeated word", "Figure without a source", "Overused word"):
        assert finding in headers


def test_short_texts_grade_lower() -> None:
    one_line = evaluate("Sleep helps memory.")
    assert one_line.grade is not None and one_line.grade <= 75


def test_no_grade_when_the_agent_gives_none() -> None:
    agent = dataclasses.replace(AGENT, provides_grades=False)
    out = evaluate(GOOD, agent)
    graded = evaluate(GOOD)
    assert out.grade is None
    assert out.comments == graded.comments
    assert "Grade" not in out.analysis and "Grade" not in out.summary
    assert evaluate("", agent).grade is None


def test_instructions_tilt_the_weights() -> None:
    text = "Studies show that 73% of people agree. Perhaps it might rain. " * 3
    evidence = dataclasses.replace(AGENT, primary_instructions="Check the evidence.")
    plain, focused = evaluate(text), evaluate(text, evidence)
    assert "Emphasis from the agent's instructions: evidence" in focused.analysis
    assert "evidence 0.5" in focused.analysis and "evidence 0.25" in plain.analysis

    def importance(out: EvaluationOutput, header: str) -> list[int | None]:
        return [c.importance for c in out.comments if c.header == header]

    assert importance(plain, "Figure without a source") == [70, 70, 70]
    assert importance(focused, "Figure without a source") == [85, 85, 85]
    assert importance(focused, "Stacked hedging") == importance(plain, "Stacked hedging")
    assert focused.grade != plain.grade
    assert as_json(evaluate(text, evidence)) == as_json(focused)
    # a word that merely contains a keyword does not count
    nuclear = evaluate(text, dataclasses.replace(AGENT, primary_instructions="nuclear"))
    assert "Emphasis" not in nuclear.analysis
    assert as_json(nuclear) == as_json(plain)


def test_findings_on_one_span_make_one_comment() -> None:
    out = evaluate(BAD)
    (first, *_) = out.comments
    assert first.header is not None
    assert first.header.split(" · ")[:3] == [
        "Long sentence (138 words)",
        "Stacked hedging",
        "Figure without a source",
    ]
    assert first.level == "warning"
    assert "Hedge words" in first.description and "no link or citation" in first.description


def test_summary_and_log() -> None:
    out = evaluate(GOOD)
    assert out.summary.startswith("A ")
    assert f"Grade {out.grade}/100." in out.summary
    assert out.log[0].startswith("offline evaluator: ")
    assert out.self_critique


# -- loading ----------------------------------------------------------------------------------
def test_default_spec_loads_the_offline_evaluator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROAST_JOBS_EVALUATOR", raising=False)
    settings = Settings()
    assert settings.evaluator == DEFAULT_SPEC
    monkeypatch.setattr("roast_jobs.config.get_settings", lambda: settings)
    evaluator = load_evaluator()
    assert isinstance(evaluator, OfflineEvaluator)
    assert isinstance(evaluator, Evaluator)
    assert isinstance(load_evaluator(DEFAULT_SPEC), OfflineEvaluator)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "roast_jobs.domain.offline_evaluator",
        "roast_jobs.domain.offline_evaluator:",
        ":OfflineEvaluator",
        "roast_jobs.domain.no_such_module:Evaluator",
        "roast_jobs.domain.offline_evaluator:NoSuchClass",
        "builtins:object",
        "roast_jobs.domain.evaluator:DocumentInput",
        "roast_jobs.domain.offline_evaluator:MAX_COMMENTS",
    ],
)
def test_bad_spec(spec: str) -> None:
    with pytest.raises(EvaluatorConfigError) as info:
        load_evaluator(spec)
    assert repr(spec) in str(info.value)
    assert isinstance(info.value, ValueError)
