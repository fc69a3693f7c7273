"""`python -m app`: the command line (app.cli.main)."""

import sys

from app.cli.main import main

sys.exit(main())
