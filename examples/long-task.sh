#!/bin/sh
# Counts to N (default 10), one line a second, on stdout; a note on stderr. The async example.
n=${1:-10}
echo "long-task: counting to $n" >&2
i=1
while [ "$i" -le "$n" ]; do
  echo "step $i/$n"
  i=$((i + 1))
  sleep 1
done
echo "long-task: done" >&2
