import sys

from proseflow.cli import main

sys.exit(main())
