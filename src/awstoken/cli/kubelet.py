"""``awstoken kubelet-credential-provider``: the kubelet's image credential provider."""

from __future__ import annotations

import argparse

from ._common import add_config_argument

NAME = "kubelet-credential-provider"
HELP = ("answer a kubelet CredentialProviderRequest on stdin with the stored token of the "
        "image's registry (credentialprovider.kubelet.k8s.io/v1)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def run(args: argparse.Namespace) -> int:
    from .._doors.kubelet import main

    return main(args.config)
