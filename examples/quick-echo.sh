#!/bin/sh
# Prints its arguments, one per line, and exits 0. The sync example.
echo "hello from quick-echo"
for arg in "$@"; do
  printf 'arg: %s\n' "$arg"
done
