"""`python -m chaos.drill SCENARIO ...`: the same command as `ringcast drill`."""

import sys

from chaos.drill.cli import main

sys.exit(main(sys.argv[1:]))
