"""Built-in agents plugin (filled by the agents work)."""
