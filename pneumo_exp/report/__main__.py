"""`python -m pneumo_exp.report`."""

from pneumo_exp.report import main

main()
