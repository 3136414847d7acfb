"""`python -m mhunet_deploy.cli`: the `mhunet` command, as the console script runs it."""

from . import main

main()
