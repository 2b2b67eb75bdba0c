"""`python -m difftune.export` moved to `python -m difftune.hub.export`: say so in one line."""

import sys

if __name__ == "__main__":
    sys.stderr.write("error: python -m difftune.export is now python -m difftune.hub.export\n")
    sys.exit(2)
