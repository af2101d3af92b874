"""Allow ``python -m medkd3d``."""

import sys

from medkd3d.cli import main

if __name__ == "__main__":
    sys.exit(main())
