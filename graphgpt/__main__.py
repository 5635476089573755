"""`python -m graphgpt` is the `graphgpt` command."""

import sys

from .cli import main

sys.exit(main())
