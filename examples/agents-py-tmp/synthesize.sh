#!/bin/sh
# synthesize.sh CHECKS_JSON: an offline stand-in for an LLM that summarises claim checks.
# Counts the checks that passed ("pass":true) and failed; prints {passed, failed, summary}.
passed=$(printf '%s' "$1" | grep -o '"pass": *true' | wc -l | tr -d ' ')
failed=$(printf '%s' "$1" | grep -o '"pass": *false' | wc -l | tr -d ' ')
if [ "$failed" -eq 0 ]; then summary="All $passed claims hold."
else summary="$passed claim(s) hold; $failed failed or are weak and need a source."; fi
printf '{"passed":%s,"failed":%s,"summary":"%s"}\n' "$passed" "$failed" "$summary"
