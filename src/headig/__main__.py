import sys

from headig.cli.main import main

sys.exit(main())
