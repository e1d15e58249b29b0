"""``python -m p8fs_runner``: the same as ``p8fs-run``."""

from p8fs_runner.cli import main

if __name__ == "__main__":
    main(prog_name="p8fs-run")
