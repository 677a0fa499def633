#!/usr/bin/env bash
# Install the real peers the integration tests run (Debian packages), when missing.
# Needs root (CI runs as root). Locally, tests whose peer is missing are skipped instead.
set -euo pipefail
packages=(redis-server openssl nginx libnginx-mod-http-lua docker-registry skopeo buildah podman wrk hyperfine apache2-utils systemd caddy)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# verdaccio (npm registry) for the proxy tests, from npm, into a cache outside the repository.
if [ ! -x "${AWSTOKEN_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/awstoken-test}/verdaccio/node_modules/.bin/verdaccio" ]; then
  bash tests/peers/install-verdaccio.sh
fi
# pnpm 9, yarn classic and yarn 4 for the proxy's encoding tests, the same way.
if [ ! -f "${AWSTOKEN_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/awstoken-test}/js-clients/node_modules/@yarnpkg/cli-dist/bin/yarn.js" ]; then
  bash tests/peers/install-js-clients.sh
fi
