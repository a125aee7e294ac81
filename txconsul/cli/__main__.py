"""``python -m txconsul.cli``: the same as the ``txconsul`` console script."""

from txconsul.cli.main import main

main()
