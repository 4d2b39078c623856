#!/bin/sh
# review.sh PASS RUBRIC DRAFT: an offline stand-in for an LLM reviewer.
# Deterministic: done when PASS >= 2; prints {pass, done, feedback}.
if [ "${1:-0}" -ge 2 ]; then done=true; feedback="Meets the rubric."
else done=false; feedback="Tighten the wording and name one concrete benefit."; fi
printf '{"pass":%s,"done":%s,"feedback":"%s"}\n' "${1:-0}" "$done" "$feedback"
