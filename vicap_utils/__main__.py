"""`python -m vicap_utils COMMAND …`: the command-line interface of `vicap_utils.ops.cli`."""
import sys

from vicap_utils.ops.cli import main

if __name__ == "__main__":
    sys.exit(main())
