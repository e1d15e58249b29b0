"""``python -m p8fs.cli``: the original system's entry point, kept for its users."""

from p8fs.cli import main

if __name__ == "__main__":
    main(prog_name="python -m p8fs.cli")
