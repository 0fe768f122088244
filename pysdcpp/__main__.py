"""``python -m pysdcpp``: the sd-cli compatible command line (see :mod:`pysdcpp.cli`)."""
import sys

from .cli import main

sys.exit(main())
