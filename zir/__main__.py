"""``python -m zir`` (and ``torchrun ... -m zir train ...``) = the ``zir`` command."""

import sys

from zir.cli import main

sys.exit(main())
