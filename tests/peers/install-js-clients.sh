#!/bin/sh
# Install the npm-world clients the proxy's encoding tests run (pnpm 9, yarn classic, yarn 4),
# outside the repository: into ${AWSTOKEN_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/awstoken-test}/js-clients.
# The tests skip a client that is missing (and fail under CI=true).
set -eu
cache="${AWSTOKEN_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/awstoken-test}"
dir="$cache/js-clients"
mkdir -p "$dir"
cat > "$dir/package.json" <<'JSON'
{
  "name": "awstoken-test-js-clients",
  "private": true,
  "dependencies": {
    "pnpm": "^9",
    "yarn": "1.22.22",
    "@yarnpkg/cli-dist": "^4"
  }
}
JSON
cd "$dir"
npm install --no-audit --no-fund --loglevel=error
test -x "$dir/node_modules/.bin/pnpm"
test -x "$dir/node_modules/.bin/yarn"
test -f "$dir/node_modules/@yarnpkg/cli-dist/bin/yarn.js"
echo "pnpm, yarn classic and yarn 4 installed in $dir"
