#!/bin/sh
# classify.sh ITEM: an offline stand-in for an LLM classifier (examples/typescript and python
# classify-and-act). Deterministic: prints one JSON object {kind, urgency, nextAction}.
# urgency "high" if the item mentions "outage" or "down", "medium" for a bug-like item, else "low".
esc() { printf '%s' "$1" | tr '\n\r\t' '   ' | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g'; }
item=$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')
case "$item" in
  *outage*|*down*) kind=ops; urgency=high; action="Page the on-call engineer and open an incident" ;;
  *bug*|*error*|*crash*|*disappear*|*broken*) kind=bug; urgency=medium; action="Reproduce it and file a bug with the steps" ;;
  *doc*|*readme*|*typo*) kind=docs; urgency=low; action="Fix the documentation" ;;
  *) kind=question; urgency=low; action="Answer from the FAQ" ;;
esac
printf '{"kind":"%s","urgency":"%s","nextAction":"%s","item":"%s"}\n' "$kind" "$urgency" "$action" "$(esc "$1")"
