"""The evaluator interface: a document version and an agent version in, an evaluation out.

The evaluator is chosen by ``ROAST_JOBS_EVALUATOR=module:Class`` (``Settings.evaluator``);
the default, ``offline_evaluator.OfflineEvaluator``, needs no network and no API key.
An evaluator raises an exception to fail the run; its message decides whether the job is
retried (``retry_classes.classify``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class DocumentInput:
    """The document version being evaluated."""

    document_id: str
    version: int
    title: str
    content: str
    authors: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentInput:
    """The agent version doing the evaluation."""

    agent_id: str
    version: int
    name: str
    description: str = ""
    primary_instructions: str | None = None
    extended_capability_id: str | None = None
    provides_grades: bool = True


@dataclass(frozen=True)
class Highlight:
    """A span of the document's content: ``content[start_offset:end_offset] == quoted_text``."""

    start_offset: int
    end_offset: int
    quoted_text: str
    prefix: str | None = None


@dataclass(frozen=True)
class Comment:
    description: str
    highlight: Highlight
    header: str | None = None
    level: str | None = None  # "error" | "warning" | "info" | "success"
    importance: int | None = None  # 0-100
    grade: int | None = None  # 0-100


@dataclass(frozen=True)
class EvaluationOutput:
    grade: int | None  # 0-100, None when the agent gives no grades
    summary: str
    analysis: str
    comments: tuple[Comment, ...] = ()
    self_critique: str | None = None
    # Lines of the run's log, stored (as markdown) in Job.logs.
    log: tuple[str, ...] = field(default=())


@runtime_checkable
class Evaluator(Protocol):
    def evaluate(self, document: DocumentInput, agent: AgentInput) -> EvaluationOutput: ...


class EvaluatorConfigError(ValueError):
    """``ROAST_JOBS_EVALUATOR`` does not name a usable evaluator class."""


def load_evaluator(spec: str | None = None) -> Evaluator:
    """An instance of the evaluator named ``module:Class`` (default: the settings')."""
    if spec is None:
        from roast_jobs.config import get_settings

        spec = get_settings().evaluator
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise EvaluatorConfigError(
            f"ROAST_JOBS_EVALUATOR must look like 'package.module:Class', not {spec!r}"
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise EvaluatorConfigError(f"cannot load evaluator {spec!r}: {exc}") from None
    try:
        evaluator = cls()
    except TypeError as exc:  # not a class, or one whose constructor needs arguments
        raise EvaluatorConfigError(f"cannot create evaluator {spec!r}: {exc}") from None
    if not isinstance(evaluator, Evaluator):
        raise EvaluatorConfigError(f"{spec!r} has no evaluate(document, agent) method")
    return evaluator
