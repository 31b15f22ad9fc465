"""Search agents over per-group channel widths (see ``hwprune.agents.base``)."""

from hwprune.agents.base import Agent, Problem, SearchResult, SearchSpace, create_agent, list_agents, register_agent

__all__ = ["Agent", "Problem", "SearchResult", "SearchSpace", "create_agent", "list_agents", "register_agent"]
