"""`python -m dspark_cli` runs the `dspark` command line."""

from dspark_cli import main

main()
