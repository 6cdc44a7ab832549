"""Entry point: `python -m batch SOURCE --db URL (--url HOST:PORT | --model_dir DIR)`."""

import sys

from batch.job import main

sys.exit(main())
