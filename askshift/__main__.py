"""``python -m askshift``: the command line."""
import sys

from askshift.cli.main import main

sys.exit(main())
