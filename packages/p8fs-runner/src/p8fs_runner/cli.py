"""`p8fs-run`: the runner's command line."""

import click


@click.group()
def main() -> None:
    """Run p8fs routers and workers."""
