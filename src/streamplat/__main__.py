"""`python -m streamplat`."""

import sys

from streamplat.cli import main

sys.exit(main())
