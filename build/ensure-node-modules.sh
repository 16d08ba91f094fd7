#!/usr/bin/env bash
# `npm test` (and `npm run demo`) on a fresh clone: install the locked dependencies first, once. npm writes
# node_modules/.package-lock.json at the end of every successful install, so its absence means "never installed".
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -e node_modules/.package-lock.json ]] && exit 0
echo "ensure-node-modules: no node_modules yet: npm ci"
exec npm ci --no-audit --no-fund --loglevel=error
