"""`python -m modelbuild COMMAND`: see modelbuild/cli.py."""

import sys

from .cli import main

sys.exit(main())
