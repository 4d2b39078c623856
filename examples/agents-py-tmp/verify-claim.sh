#!/bin/sh
# verify-claim.sh INDEX CLAIM: an offline stand-in for an agent that checks one claim.
# Deterministic: a claim passes if it contains "journal". Prints {index, claim, pass, evidence}.
esc() { printf '%s' "$1" | tr '\n\r\t' '   ' | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g'; }
case "$2" in
  *journal*) pass=true; evidence="the claim names the journal, which the step routes write" ;;
  *) pass=false; evidence="no source found that supports the claim" ;;
esac
printf '{"index":%s,"claim":"%s","pass":%s,"evidence":"%s"}\n' "${1:-0}" "$(esc "$2")" "$pass" "$evidence"
