#!/bin/sh
# Writes to stderr and exits with the code given (default 3).
echo "something went wrong" >&2
exit "${1:-3}"
