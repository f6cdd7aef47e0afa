import sys

from nocosup.cli import main

sys.exit(main())
