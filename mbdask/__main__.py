"""``python -m mbdask``: see ``mbdask.cli``."""

from mbdask.cli import entry

if __name__ == "__main__":
    entry()
