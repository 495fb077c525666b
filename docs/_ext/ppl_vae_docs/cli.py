"""The command-line reference, generated from the argparse definitions (``ppl_vae.cli.build_parser``).

Every subcommand gets a section with its usage line, its description and every argument with its
help, choices and default; the options every subcommand shares (``--threads``, ``--max-memory``,
``--debug``) are found by comparing the subcommands and listed once.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Argument:
    """One argument of a command, as the reference prints it."""

    names: tuple[str, ...]  # option strings, or the positional's name
    metavar: str  # what follows the flag ("" for a switch)
    help: str
    choices: tuple[str, ...] = ()
    default: str = ""  # "" when there is no default worth printing


@dataclass(frozen=True)
class Command:
    """One subcommand: its usage line, its description and its arguments (shared ones left out)."""

    name: str
    usage: str
    description: str
    arguments: tuple[Argument, ...]


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    # argparse keeps the arguments in ``_actions``; there is no public accessor (sphinx-argparse reads the same).
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def _metavar(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        text = action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    elif action.choices is not None:
        text = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        text = action.dest.upper() if action.option_strings else action.dest
    return {"*": f"[{text} ...]", "+": f"{text} [{text} ...]", "?": f"[{text}]"}.get(action.nargs, text)


def _default(action: argparse.Action) -> str:
    value = action.default
    if value is None or value is argparse.SUPPRESS or action.nargs == 0 or value == []:
        return ""  # None means "see the help" here: the config file or the help text gives the default
    return str(value)


def _usage(parser: argparse.ArgumentParser, width: int = 100) -> str:
    """The usage lines argparse prints, wrapped at a fixed width (not the terminal's) so builds agree."""
    formatter = argparse.HelpFormatter(parser.prog, width=width)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip()


def argument(action: argparse.Action) -> Argument:
    """How one argparse action is printed."""
    names = tuple(action.option_strings) or (action.dest,)
    help_text = action.help or ""
    if "%(" in help_text:
        help_text = help_text % {**vars(action), "prog": ""}
    choices = tuple(map(str, action.choices)) if action.choices is not None else ()
    return Argument(names, _metavar(action), help_text, choices, _default(action))


def commands() -> tuple[tuple[Command, ...], tuple[Argument, ...], tuple[Argument, ...]]:
    """Every subcommand, the arguments all of them share, and the main parser's own options."""
    from ppl_vae.cli import build_parser

    parser, _ = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help or "" for choice in subparsers._choices_actions}
    per_command = {name: [argument(a) for a in _actions(p)] for name, p in subparsers.choices.items()}
    shared_names = set.intersection(*({arg.names for arg in args} for args in per_command.values()))
    any_command = next(iter(per_command.values()))
    shared = tuple(arg for arg in any_command if arg.names in shared_names)
    found = []
    for name, sub in subparsers.choices.items():
        usage = _usage(sub)
        description = sub.description or helps.get(name, "")
        own = tuple(arg for arg in per_command[name] if arg.names not in shared_names)
        found.append(Command(name, usage, description, own))
    return tuple(found), shared, tuple(argument(a) for a in _actions(parser))


def escape_markdown(text: str) -> str:
    """Plain help text as Markdown: characters Markdown would read as markup are escaped, except inside
    backtick code spans, which the help texts use for commands."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        parts[i] = "".join("\\" + ch if ch in "\\*_<>[]$|#" else ch for ch in parts[i])
    return "`".join(parts)


def _definition(arg: Argument) -> list[str]:
    term = " / ".join(
        f"`{name}{' ' + arg.metavar if arg.metavar and name.startswith('-') else ''}`" for name in arg.names
    )
    facts = []
    if arg.choices and not arg.metavar.startswith("{"):
        facts.append("one of " + ", ".join(f"`{c}`" for c in arg.choices))
    if arg.default:
        facts.append(f"default `{arg.default}`")
    text = escape_markdown(arg.help.strip())
    if facts:
        joined = "; ".join(facts)
        text = f"{text} ({joined})" if arg.help else joined[0].upper() + joined[1:]
    return [term, f": {text}", ""]


def cli_markdown() -> str:
    """The body of the CLI reference page."""
    found, shared, main_options = commands()
    lines = [
        "Every command below is `ppl-vae COMMAND` (or `python -m ppl_vae COMMAND`); "
        f"there are {len(found)} of them. `ppl-vae COMMAND --help` prints the same text.",
        "",
        "(cli-common)=",
        "## Options every command takes",
        "",
    ]
    for arg in shared:
        lines += _definition(arg)
    before = [arg for arg in main_options if arg.names not in {a.names for a in shared}]
    if before:
        lines += ["Options of `ppl-vae` itself, given before the command:", ""]
        for arg in before:
            lines += _definition(arg)
    for command in found:
        lines += [
            f"(cli-{command.name})=",
            f"## `ppl-vae {command.name}`",
            "",
            escape_markdown(command.description),
            "",
        ]
        lines += ["```text", command.usage, "```", ""]
        for arg in command.arguments:
            lines += _definition(arg)
    return "\n".join(lines)
