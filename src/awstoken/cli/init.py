"""``awstoken init``: print a commented starter configuration that ``awstoken check`` accepts."""

from __future__ import annotations

import argparse
import sys

NAME = "init"
HELP = ("print a commented starter configuration (awstoken init > awstoken.toml), valid as it "
        "is; edit the registry and region, then run awstoken check -c awstoken.toml")

STARTER = '''\
# awstoken configuration: every key is described in docs/configuration.md.
# Validate with `awstoken check -c awstoken.toml`, run with `awstoken serve -c awstoken.toml`.

[storage]
# Where tokens live between processes. "file" (one host; the default directory is
# $AWSTOKEN_DIR, else $XDG_RUNTIME_DIR/awstoken, else /tmp/awstoken-UID), "memory" (one
# process) or "redis" (many hosts: url = "rediss://host:6379/0", password_env = "REDIS_PW").
type = "file"

[tokens.ecr]
# How to get the token: a command (run without a shell when given as a list) or a native
# source (source = "ecr" with region = "...", needs awstoken[aws]).
command = ["aws", "ecr", "get-login-password", "--region", "us-east-1"]
# ECR's password goes in Basic auth with the user name AWS.
basic_user = "AWS"
# Refresh at least this often (ECR tokens live 12 hours); retry after a failure, backing off.
interval = "6h"
retry = "30s"

[server]
# The proxy: clients (docker, skopeo) talk to it; it adds the token. Loopback only: to serve
# other hosts, listen on their network and add htpasswd, bearer_tokens_env or allow.
listen = "127.0.0.1:8080"
# /healthz, /readyz and /metrics ("off" to disable).
admin_listen = "127.0.0.1:8479"
# log_level = "info"        # debug, info, warning, error
# log_format = "text"       # or "json", one object per line

[[routes]]
# Requests under this prefix go to this upstream with the token attached.
prefix = "/v2/"
upstream = "https://123456789012.dkr.ecr.us-east-1.amazonaws.com"
token = "ecr"
'''


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(STARTER)
    return 0
