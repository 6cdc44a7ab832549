"""Entry point: `python -m batch SOURCE --db URL (--url HOST:PORT | --model_dir DIR)`, or
`python -m batch labels FILE.csv --db URL` / `python -m batch evaluate --db URL`."""

import sys

from batch.cli import main

sys.exit(main())
