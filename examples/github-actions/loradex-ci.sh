#!/usr/bin/env bash
# What the GitHub Actions workflow (loradex.yml) runs for one adapter folder of the repository.
#
#   loradex-ci.sh pr|merge FOLDER NAME ALIAS SIGNATURE [PUBLISH OPTIONS...]
#
# pr:    check the folder against the base signature (annotations), register it as a candidate
#        version (identical content returns the version registered before), and dry-run the
#        publish to ALIAS (annotations and a step summary); exit 1 when a gate fails.
# merge: the same, then publish for real: the alias moves only when every gate passes.
#
# FOLDER may hold evals.txt: one eval per line, METRIC=VALUE[,dataset=D][,split=S].
# The loradex CLI talks to the team registry when LORADEX_SERVER and LORADEX_TOKEN are set
# (the remote CLI), else to the local registry in LORADEX_HOME.
set -euo pipefail

if [ "$#" -lt 5 ]; then
  echo "usage: $0 pr|merge FOLDER NAME ALIAS SIGNATURE [PUBLISH OPTIONS...]" >&2
  exit 2
fi
mode=$1 folder=$2 name=$3 alias=$4 signature=$5
shift 5
case "$mode" in
  pr) dry_run=(--dry-run) ;;
  merge) dry_run=() ;;
  *) echo "mode must be pr or merge, got '$mode'" >&2; exit 2 ;;
esac

evals=()
if [ -f "$folder/evals.txt" ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in ''|'#'*) continue ;; esac
    evals+=(--eval "$line")
  done < "$folder/evals.txt"
fi

loradex check --adapter "$folder" --base-signature "$signature" --format github
version=$(loradex register "$folder" --name "$name" "${evals[@]}" --quiet --json \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["version"])')
echo "candidate: $name@$version"
loradex publish "$name@$version" --alias "$alias" --base-signature "$signature" \
  "${dry_run[@]}" --format github "$@"
