import sys

from steadygrad.cli import main

sys.exit(main())
