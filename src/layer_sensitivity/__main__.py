"""``python -m layer_sensitivity [hydra overrides]`` runs one sensitivity job."""

import sys

from .cli.common import expand_packed_overrides


def main() -> None:
    sys.argv = expand_packed_overrides(sys.argv)
    from .cli.sensitivity import main as sensitivity

    sensitivity()


if __name__ == "__main__":
    main()
