"""
C{python -m quartet_sftpd.cli}: the same as the C{quartet-sftpd} command.
"""

import sys

from quartet_sftpd.cli import main

sys.exit(main())
