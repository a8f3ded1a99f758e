"""Storing agents: an ``Agent`` with its ``AgentVersion`` 1."""

from __future__ import annotations

from sqlalchemy.orm import Session

from roast_jobs.db.models import Agent, AgentVersion


def create_agent(
    session: Session,
    submitted_by_id: str,
    *,
    name: str,
    description: str = "",
    primary_instructions: str | None = None,
    self_critique_instructions: str | None = None,
    provides_grades: bool = False,
    extended_capability_id: str | None = None,
    readme: str | None = None,
) -> str:
    """A new agent of ``submitted_by_id`` with version 1; returns its id."""
    agent = Agent(submitted_by_id=submitted_by_id)
    session.add(agent)
    session.flush()
    session.add(
        AgentVersion(
            agent_id=agent.id,
            version=1,
            name=name,
            description=description,
            primary_instructions=primary_instructions,
            self_critique_instructions=self_critique_instructions,
            provides_grades=provides_grades,
            extended_capability_id=extended_capability_id,
            readme=readme,
        )
    )
    session.flush()
    return agent.id
