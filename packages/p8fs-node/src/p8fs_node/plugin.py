"""The p8fs-node plugin: registers this distribution's providers through the `p8fs` hooks."""
