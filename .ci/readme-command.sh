#!/usr/bin/env bash
# Prints one of the two commands the README starts with: the line after `# Run:` or
# `# Test:` (the argument) in its first ```sh block. CI runs what this prints, so the
# README's commands are the ones tested, character for character.
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:?usage: readme-command.sh Run|Test}
found=$(awk -v tag="# $label:" '
    /^```sh$/ && !seen { inside = 1; seen = 1; next }
    inside && /^```/ { exit }
    inside && take { print; exit }
    inside && index($0, tag) == 1 { take = 1 }
' README.md)
if [ -z "$found" ]; then
    echo "README.md's first sh block has no command after '# $label:'" >&2
    exit 1
fi
printf '%s\n' "$found"
