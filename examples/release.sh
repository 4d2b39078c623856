#!/bin/bash
# An example workflow: every `script-runner step` is journaled by its label, so when this run
# is re-executed (after a crash, a pause, an approval that parked it) the steps already done
# return their journaled result instead of running again. Step output goes to stderr so the
# run's output (this script's stdout) is the JSON at the end.
set -euo pipefail
version=$(echo "$SCRIPT_RUN_ARGS" | sed -n 's/.*"version" *: *"\([^"]*\)".*/\1/p')
version=${version:-0.0.0}

script-runner step --progress 1/4 "building $version" >&2
build_id=$(script-runner step build-id --value-from -- date +%Y%m%d%H%M%S)
script-runner step build --script quick-echo "build $version ($build_id)" >&2
script-runner step --progress 2/4 "testing" >&2
script-runner step test -- sh -c 'echo "tests pass"' >&2
script-runner step --progress 3/4 "waiting for approval" >&2
if ! script-runner step ship --approval "Ship $version?" >&2; then
  echo "{\"version\": \"$version\", \"shipped\": false}"
  exit 0
fi
script-runner step publish --script quick-echo "published $version" >&2
script-runner step --progress 4/4 "done" >&2
echo "{\"version\": \"$version\", \"build\": \"$build_id\", \"shipped\": true}"
