import sys

from mint.cli import main

sys.exit(main())
