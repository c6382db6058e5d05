"""``python -m deconv3d``: the same command line as ``deconv3d`` (:func:`deconv3d.cli.main`)."""

import sys

from deconv3d.cli import main

sys.exit(main())
