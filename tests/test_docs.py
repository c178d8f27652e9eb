"""The README documents every CLI command and every command's help has an example."""

from pathlib import Path

import click
import pytest

from provmark.cli import cli

README = (Path(__file__).parent.parent / "README.md").read_text()


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        path = (*prefix, name)
        if isinstance(command, click.Group):
            yield from _commands(command, path)
        else:
            yield path, command


COMMANDS = list(_commands(cli))


def test_readme_starts_with_the_two_commands():
    assert README.split("```")[1].strip().splitlines() == [
        "make demo   # watermarked generation with the embedded model, then its detection",
        "make test   # the test suite",
    ]


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_is_in_the_readme_and_has_an_example(path, command):
    assert f"`provmark {' '.join(path)}`" in README
    assert "Example:" in (command.help or "")


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_is_in_the_readme(path, command):
    # get_params, not params: keys create derives its scheme options when it runs
    for param in command.get_params(click.Context(command, help_option_names=["-h", "--help"])):
        if isinstance(param, click.Option) and not set(param.opts) <= {"-h", "--help"}:
            assert any(opt in README for opt in param.opts if opt not in ("-h", "--help")), (path, param.opts)
