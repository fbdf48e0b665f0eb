"""Every command's help against its parser: each value or flag a help text names is accepted.

The claims are read off the parsers themselves, so a help text and its parser cannot drift apart
again (``--sweep`` documented ``none: no sweep`` while ``type=float`` refused ``none``):

* every choice of every argument;
* a documented default (``default: X``): X parses, to the option's default when it has one;
* a documented value (``X: what it means``, a clause of its own), e.g. ``none: no sweep``;
* every ``--flag`` an option's help mentions is a flag of the same command;
* every command line quoted in a description or help (```drip filter --engine onnx ...```).

Each claim is one ``parse_args`` of the command with placeholders for its other required
arguments: no subprocess, no torch work.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from drip.cli import build_parser
from drip.experiment import DEFAULT_SWEEP, ExperimentConfig
from drip.parallel import resolve_device

ROOT = build_parser()
# A placeholder any type here accepts: int, float, Path and str.
PLACEHOLDER = "1"
# ``default: X`` up to the end of its clause, and ``X: meaning`` at the start of a clause.
DEFAULT = re.compile(r"default: ([^,;()]+?)\s*(?:$|[,;)])")
DEFINED = re.compile(r"(?:^|[(;,]\s*)([\w.+-]+): ")
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")
QUOTED = re.compile(r"`([^`]*)`")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


ANY = object()


class Claim(NamedTuple):
    """``argv`` (one command's words, then arguments) must parse; ``dest`` must then be
    ``expected`` unless that is ``ANY``."""

    where: str
    argv: list[str]
    dest: str | None = None
    expected: Any = None


def commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> Iterator[tuple]:
    """(words, parser) of every command that runs (a parser without subcommands)."""
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        yield words, parser
    for action in subcommands:
        for name, sub in action.choices.items():
            yield from commands(sub, (*words, name))


def takes_values(action: argparse.Action) -> bool:
    """Whether the option is followed by a value (not a switch such as ``--quiet``)."""
    return action.nargs != 0


def is_list(action: argparse.Action) -> bool:
    """Whether the option takes several values (``--sweep 0.2 0.4``)."""
    return action.nargs in ("*", "+") or (isinstance(action.nargs, int) and action.nargs > 1)


def placeholder(action: argparse.Action) -> list[str]:
    """Arguments that satisfy ``action`` and claim nothing: its first choice, else ``PLACEHOLDER``."""
    value = str(next(iter(action.choices))) if action.choices else PLACEHOLDER
    if not action.option_strings:
        return [value]
    return [action.option_strings[0], *([value] if takes_values(action) else [])]


def completed(parser: argparse.ArgumentParser, words: tuple[str, ...], args: list[str]) -> list[str]:
    """``args`` with a placeholder for every required argument they lack: parsing the result
    tests only what ``args`` say."""
    given = set(args)
    # Leading words are the claim's own positional values; placeholders fill the rest.
    leading = list(itertools.takewhile(lambda word: not word.startswith("-"), args))
    options = args[len(leading) :]
    positionals, extra = list(leading), []
    for group in parser._mutually_exclusive_groups:
        members = group._group_actions
        if group.required and not any(s in given for a in members for s in a.option_strings):
            extra += placeholder(members[0])
    for action in parser._actions:
        if not action.option_strings:
            if not leading:
                positionals += placeholder(action)
            leading = leading[1:]
        elif action.required and not given & set(action.option_strings):
            extra += placeholder(action)
    return [*words, *positionals, *extra, *options]


def value_of(action: argparse.Action, words: list[str]) -> list[str]:
    """The command-line arguments that give ``action`` the values ``words``."""
    return [*action.option_strings[:1], *words]


def literal(action: argparse.Action, text: str) -> list[str] | None:
    """The words of a documented value, or None when ``text`` is prose ("band search"): one word,
    or for a list option a run of numbers."""
    words = text.split()
    if len(words) == 1:
        return words
    if is_list(action) and all(NUMBER.fullmatch(w) for w in words):
        return words
    return None


def claims_of(words: tuple[str, ...], parser: argparse.ArgumentParser) -> Iterator[Claim]:
    """What the help of each argument of one command claims (``argv`` not yet completed)."""
    command = " ".join(("drip", *words))
    for action in parser._actions:
        if action.help in (None, argparse.SUPPRESS) and not action.choices:
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        where = f"{command} {name}"
        for choice in action.choices or ():
            expected = [choice] if is_list(action) else choice
            yield Claim(f"{where}: choice {choice}", value_of(action, [str(choice)]), action.dest, expected)
        help_text = " ".join((action.help or "").split())
        if not takes_values(action):  # a switch (--quiet, --help) has no values to document
            continue
        for text in DEFAULT.findall(help_text):
            if (values := literal(action, text)) is not None:
                expected = ANY if action.default is None else action.default
                yield Claim(f"{where}: default {text}", value_of(action, values), action.dest, expected)
        for text in DEFINED.findall(help_text):
            if text != "default":
                yield Claim(f"{where}: documented value {text}", value_of(action, [text]))
        for flag in FLAG.findall(help_text):
            flag_action = parser._option_string_actions.get(flag)
            args = [flag] if flag_action is None else placeholder(flag_action)
            yield Claim(f"{where}: mentions {flag}", [flag, *args[1:]])


def quoted_command_lines() -> Iterator[Claim]:
    """Every ``drip ...`` command line quoted in a description or help, placeholders (OUT, N)
    and ``...`` filled in or dropped."""
    texts = [ROOT.description or ""]
    for _, parser in commands(ROOT):
        texts += [parser.description or "", *(a.help or "" for a in parser._actions)]
    for text in texts:
        for quoted in QUOTED.findall(" ".join(text.split())):
            line = quoted.split()
            if "drip" not in line:
                continue
            args = [w for w in line[line.index("drip") + 1 :] if w != "..."]
            yield Claim(f"quoted: {quoted}", [PLACEHOLDER if w.isupper() else w for w in args])


def all_claims() -> list[Claim]:
    """Every claim of every command, completed into a whole command line."""
    claims = []
    for words, parser in commands(ROOT):
        for claim in claims_of(words, parser):
            claims.append(claim._replace(argv=completed(parser, words, claim.argv)))
    for claim in quoted_command_lines():
        words: tuple[str, ...] = ()
        parser = ROOT
        for run_words, run_parser in commands(ROOT):
            if tuple(claim.argv[: len(run_words)]) == run_words:
                words, parser = run_words, run_parser
        claims.append(claim._replace(argv=completed(parser, words, claim.argv[len(words) :])))
    return claims


CLAIMS = all_claims()


def parse(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by ``drip``'s parser; its error message as an AssertionError if refused."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return ROOT.parse_args(argv)
    except SystemExit:
        raise AssertionError(f"drip {' '.join(argv)}: {errors.getvalue().strip().splitlines()[-1]}") from None


def test_the_claims_cover_every_command_and_every_kind_of_claim():
    for words, _ in commands(ROOT):
        assert any(claim.where.startswith(" ".join(("drip", *words, ""))) for claim in CLAIMS), words
    kinds = {claim.where.split(": ")[1].split()[0] for claim in CLAIMS}
    assert {"choice", "default", "documented", "mentions"} <= kinds
    assert any(claim.where.startswith("quoted") for claim in CLAIMS)
    assert any("--sweep: documented value none" in claim.where for claim in CLAIMS)


@pytest.mark.parametrize("claim", CLAIMS, ids=[claim.where for claim in CLAIMS])
def test_what_the_help_says_the_parser_accepts(claim):
    args = parse(claim.argv)
    if claim.dest is not None and claim.expected is not ANY:
        assert getattr(args, claim.dest) == claim.expected, claim.where


def experiment(*args: str) -> argparse.Namespace:
    return parse(["experiment", "--dataset", "digits", *args])


@pytest.mark.parametrize("args", [["--sweep", "none"], ["--sweep"]])
def test_sweep_none_or_alone_runs_no_sweep(args):
    sweep = experiment(*args).sweep
    assert sweep == () and ExperimentConfig.for_dataset("digits", sweep=sweep).sweep == ()


def test_sweep_values_and_its_documented_default():
    assert experiment("--sweep", "0.2", "0.45").sweep == (0.2, 0.45)
    assert ExperimentConfig.for_dataset("digits", sweep=experiment().sweep).sweep == DEFAULT_SWEEP
    help_text = " ".join(dict(commands(ROOT))[("experiment",)].format_help().split())
    assert f"default: {' '.join(map(str, DEFAULT_SWEEP))};" in help_text


@pytest.mark.parametrize("args", [["0.2", "none"], ["none", "none"], ["x"]])
def test_sweep_refuses_what_is_neither_numbers_nor_none(args):
    with pytest.raises(AssertionError, match="--sweep: expected q_high values or none"):
        experiment("--sweep", *args)


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0"])
def test_the_devices_the_help_names_are_accepted(device):
    # --device is a free string for the parser; resolve_device is what accepts or refuses it.
    help_text = dict(commands(ROOT))[("score",)]._option_string_actions["--device"].help
    assert "cpu, cuda or cuda:N" in help_text
    assert resolve_device(device).type in ("cpu", "cuda")
