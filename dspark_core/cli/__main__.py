"""`python -m dspark_core.cli` runs the `dspark` command line."""

from dspark_core.cli import main

main()
