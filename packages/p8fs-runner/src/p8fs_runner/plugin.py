"""The p8fs-runner plugin: adds the runner's verbs to the core `p8fs` CLI."""
