"""``python -m layer_sensitivity [hydra overrides]`` runs one sensitivity job."""

import sys

from .cli.common import expand_packed_overrides
from .tracking.credentials import scrub_process


def main() -> None:
    # Passwords leave the command line before Hydra writes it anywhere (.hydra/, job lists).
    sys.argv = scrub_process(expand_packed_overrides(sys.argv))
    from .cli.sensitivity import main as sensitivity

    sensitivity()


if __name__ == "__main__":
    main()
