#!/usr/bin/env bash
# Fails when the repository tracks a file larger than MAX_KB (default 2 MiB):
# binaries, media and models do not belong in it (media and models live in
# ../shared, built programs in bin/).
set -euo pipefail
cd "$(dirname "$0")/.."
max_kb=${MAX_KB:-2048}
big=$(git ls-files -z | xargs -0 -r du -k --apparent-size 2>/dev/null | awk -v max="$max_kb" '$1 > max {print $2 " (" $1 " KiB)"}')
if [ -n "$big" ]; then
	echo "check-repo: tracked files over $max_kb KiB (remove them and ignore them):" >&2
	echo "$big" >&2
	exit 1
fi
