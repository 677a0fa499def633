#!/bin/sh
# Install verdaccio 6 (an npm registry) for the proxy tests, outside the repository:
# into ${AWSTOKEN_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/awstoken-test}/verdaccio.
# The tests skip the npm path when it is missing (and fail under CI=true).
set -eu
cache="${AWSTOKEN_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/awstoken-test}"
dir="$cache/verdaccio"
mkdir -p "$dir"
cat > "$dir/package.json" <<'JSON'
{
  "name": "awstoken-test-verdaccio",
  "private": true,
  "dependencies": { "verdaccio": "^6" },
  "overrides": { "node-fetch": "2.7.0" }
}
JSON
cd "$dir"
npm install --no-audit --no-fund --loglevel=error
test -x "$dir/node_modules/.bin/verdaccio"
echo "verdaccio installed in $dir"
