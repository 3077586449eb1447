"""The README's install, upgrade and uninstall commands — what the e2e suite runs verbatim —
parse, name this chart, and install something that renders."""

from __future__ import annotations

import shlex

from chart_support import CHART_DIR, NAMESPACE, RELEASE, REPO_ROOT, render
from e2e_support import KIND_VALUES, MY_VALUES, install_commands
from helm_python import parse_set_string

from avatar_sdk import client


def helm_args(line: str) -> tuple[list[str], dict[str, str]]:
    """Positional words and --flags of a helm command line."""
    words = shlex.split(line)
    positional, flags = [], {}
    index = 0
    while index < len(words):
        word = words[index]
        if word.startswith("--"):
            if "=" in word:
                key, value = word[2:].split("=", 1)
            elif index + 1 < len(words) and not words[index + 1].startswith("-"):
                key, value = word[2:], words[index + 1]
                index += 1
            else:
                key, value = word[2:], ""
            flags[key] = value
        else:
            positional.append(word)
        index += 1
    return positional, flags


def test_the_readme_has_install_upgrade_and_uninstall_blocks() -> None:
    commands = install_commands()
    assert [c.split()[0] for c in commands.install] == ["kubectl", "kubectl", "helm"]
    assert commands.upgrade[-1].startswith("helm upgrade ")
    assert commands.uninstall[0].startswith("helm uninstall ")


def test_the_readme_helm_install_renders() -> None:
    line = install_commands().install[-1]
    positional, flags = helm_args(line)
    assert positional[:4] == ["helm", "install", RELEASE, "./charts/avatar-operator"]
    assert (REPO_ROOT / positional[3]).resolve() == CHART_DIR
    assert flags["namespace"] == NAMESPACE
    values: dict[str, object] = {}
    if "set" in flags:
        values = parse_set_string(flags["set"])
    rendered = render(values, name=positional[2], namespace=flags["namespace"])
    assert rendered.one("Deployment", RELEASE)
    # the Secret the README creates is the one the chart's defaults name
    secret_line = install_commands().install[1]
    assert "create secret generic videosdk-credentials" in secret_line
    assert "--from-literal=apiKey=" in secret_line and "--from-literal=secret=" in secret_line
    env = rendered.one("Deployment", RELEASE)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "AVATAR_OPERATOR_DEFAULT_CREDENTIALS_SECRET",
        "value": "videosdk-credentials",
    } in env


def test_the_upgrade_takes_the_users_values_and_the_crd() -> None:
    upgrade = install_commands().upgrade
    assert (
        upgrade[0]
        == "kubectl apply --server-side --force-conflicts -f charts/avatar-operator/crds/"
    )
    positional, flags = helm_args(upgrade[1])
    assert positional[2:4] == [RELEASE, "./charts/avatar-operator"]
    assert flags["values"] == MY_VALUES and flags["namespace"] == NAMESPACE
    assert (REPO_ROOT / KIND_VALUES).is_file()  # what the e2e suite puts in its place


def test_the_uninstall_removes_the_crd_too() -> None:
    uninstall = install_commands().uninstall
    assert helm_args(uninstall[0])[0][2] == RELEASE
    assert uninstall[1] == "kubectl delete crd avatarsessions.avatar-operator.dev"


def test_the_clients_hint_is_the_readme_install() -> None:
    positional, flags = helm_args(client.CHART_INSTALL)
    readme_positional, readme_flags = helm_args(install_commands().install[-1])
    assert positional == readme_positional
    assert flags["namespace"] == readme_flags["namespace"]


def test_make_up_installs_the_kind_values() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert f"KIND_VALUES := {KIND_VALUES}" in makefile
    assert "kubectl apply -f examples/session.yaml" in makefile.replace("$(KUBECTL)", "kubectl")
