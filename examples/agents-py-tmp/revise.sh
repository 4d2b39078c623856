#!/bin/sh
# revise.sh PASS RUBRIC DRAFT: an offline stand-in for an LLM that revises a draft.
# Deterministic: trims the draft and marks the pass; prints {pass, draft}.
esc() { printf '%s' "$1" | tr '\n\r\t' '   ' | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g'; }
draft=$(printf '%s' "$3" | sed 's/ *(revised, pass [0-9]*)$//; s/^ *//; s/ *$//')
printf '{"pass":%s,"draft":"%s"}\n' "${1:-1}" "$(esc "$draft (revised, pass ${1:-1})")"
