#!/bin/sh
# follow-up.sh KIND ITEM ACTION: an offline stand-in for creating an agent task.
# Deterministic: the task id is a checksum of the item; prints {taskId, kind, priority, status, action}.
esc() { printf '%s' "$1" | tr '\n\r\t' '   ' | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g'; }
id=$(printf '%s' "$2" | cksum | cut -d' ' -f1)
printf '{"taskId":"task-%s","kind":"%s","priority":80,"status":"created","action":"%s","stepKey":"%s"}\n' \
  "$id" "$(esc "$1")" "$(esc "$3")" "$(esc "$SCRIPT_STEP_KEY")"
