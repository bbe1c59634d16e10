import sys

from aef_pipeline.cli import main

sys.exit(main())
