"""The docs check for commands: every ``kdcache`` command line in README.md and docs/ (fenced
blocks and inline code, synopses with ``[...]`` and ``a|b`` included) names a real command and
only that command's real options, with valid choices, and a whole command in a fenced block
parses with the real command line; every command and benchmark, and every option of a command,
is in the command reference. Run as a script, it lists what it finds wrong."""

import argparse
import contextlib
import difflib
import functools
import importlib.util
import io
import pathlib
import re
import shlex
import sys
from dataclasses import dataclass

from kdcache import ViewPlan
from kdcache.errors import KdcacheError
from kdcache.tools.cli.main import build_parser as _build_parser
from kdcache.tools.cli.main import command_names

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMANDS_PAGE = ROOT / "docs" / "guide" / "commands.md"
# the real parser, built once (parsing leaves it as it is)
build_parser = functools.cache(_build_parser)

_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"(`+)((?:(?!\1)(?!\n\n)[\s\S])+?)\1")
_COMMENT = re.compile(r"<!--.*?-->", re.S)
# options of other tools the docs name, with the tool
FOREIGN_OPTIONS = {
    "--num-cpus": "ray start",
    "--num-gpus": "ray start",
    "--nnodes": "torchrun",
    "--nproc_per_node": "torchrun",
    "--flag": "contributing.md: any command-line flag",
}
_SHELL_LANGUAGES = ("", "bash", "sh", "shell", "console")
_SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", "$("}
_REDIRECTS = {">", ">>", "<", ">&", "&>", "2>", "2>&1"}
_ASSIGNMENT = re.compile(r"^([A-Za-z_]\w*)=(.*)$", re.S)
# a placeholder word: DATA, N, [NAME=]PATH, <id>, $W, … or ...; not 1M or 14.2M
_PLACEHOLDER = re.compile(r"(?<![0-9A-Za-z.])[A-Z][A-Z0-9_]*(?![a-z])|[<$…]|\.\.\.")
# a subcommand named without ``kdcache``: `teach --dry-run`, `train --teacher online ...`
_BARE = re.compile(rf"^(?:{'|'.join(command_names())})\s+(?:\w+\s+)?(?:\.\.\.\s+)?--?[a-z]")


@dataclass(frozen=True)
class Snippet:
    """A piece of code in a page: a fenced block's logical line or an inline code span."""

    page: str
    line: int
    text: str
    fenced: bool
    language: str = ""

    def where(self) -> str:
        return f"{self.page}:{self.line}"


def doc_files() -> list[pathlib.Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _relative(page: pathlib.Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name


def snippets(page: pathlib.Path) -> list[Snippet]:
    """Every fenced line (shell lines joined over ``\\`` continuations) and inline code span
    of a page, with the line it starts on; HTML comments are not rendered, so not read."""
    text = _COMMENT.sub(lambda c: re.sub(r"[^\n]", " ", c.group()), page.read_text("utf-8"))
    found, prose, fence, language, pending = [], [], None, "", None
    for number, line in enumerate(text.splitlines(), 1):
        opened = _FENCE.match(line)
        if fence is None and opened:
            fence, language = opened.group(1), opened.group(2).lower()
            prose.append("")
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                if pending is not None:  # a last line ending in a continuation
                    found.append(Snippet(_relative(page), *pending, True, language))
                fence, pending = None, None
            elif language in _SHELL_LANGUAGES and pending is not None:
                pending = (pending[0], pending[1] + " " + line.strip())
            else:
                pending = (number, line.strip())
            if pending is not None and not pending[1].endswith("\\"):
                found.append(Snippet(_relative(page), *pending, True, language))
                pending = None
            elif pending is not None:
                pending = (pending[0], pending[1][:-1])
            prose.append("")
            continue
        prose.append(line)
    joined = "\n".join(prose)
    for span in _CODE_SPAN.finditer(joined):
        code = " ".join(span.group(2).replace("\\|", "|").split())
        found.append(Snippet(_relative(page), joined.count("\n", 0, span.start()) + 1, code, False))
    return found


def _assignments(page_snippets: list[Snippet]) -> dict[str, str]:
    """Shell variables a page's fenced lines set to plain text (``TEACHER="--teacher-arch
    ..."``), expanded where the page uses them unquoted, as the shell would."""
    found = {}
    for snippet in page_snippets:
        if snippet.fenced and snippet.language in _SHELL_LANGUAGES:
            for word in _words(snippet.text):
                assigned = _ASSIGNMENT.match(word)
                if assigned and "$" not in assigned.group(2):
                    found[assigned.group(1)] = assigned.group(2)
    return found


def _words(line: str, *, pipes: bool = True) -> list[str]:
    """Shell words and operators of a line, comments dropped; without ``pipes`` a ``|`` is a
    synopsis's "or" (`fp16|q8`, `--resume | --overwrite`), part of the words."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="();<>&" + "|" * pipes)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unclosed quote: not a shell line
        return []


@dataclass(frozen=True)
class Command:
    """One kdcache invocation found in a page."""

    snippet: Snippet
    argv: tuple[str, ...]
    synopsis: bool  # with [optional] parts, a|b alternatives or ...: names only, not parsed
    module: str = "kdcache"  # or a tool run as ``python -m kdcache.tools.NAME``

    def shown(self) -> str:
        program = "kdcache" if self.module == "kdcache" else f"python -m {self.module}"
        return " ".join((program, *self.argv))


def _invocations(words: list[str], *, pipes: bool = True) -> list[tuple[str, list[str]]]:
    """The module and arguments of each ``kdcache`` (``python -m kdcache``, ``torchrun -m
    kdcache``, ``python -m kdcache.tools.NAME``) command among a line's words, split at shell
    operators, redirections dropped."""
    segments, current = [], []
    for word in words:
        if word in _SEPARATORS and (pipes or word != "|"):
            segments.append(current)
            current = []
        else:
            current.append(word)
    segments.append(current)
    found = []
    for segment in segments:
        kept, skip = [], False
        for index, word in enumerate(segment):
            if skip:
                skip = False
            elif word in _REDIRECTS or (word.isdigit() and segment[index + 1 : index + 2] == [">"]):
                skip = word in _REDIRECTS
            else:
                kept.append(word)
        while kept and _ASSIGNMENT.match(kept[0]):
            kept.pop(0)
        if kept[:1] == ["kdcache"]:
            found.append(("kdcache", kept[1:]))
        elif "-m" in kept and kept[0].split("/")[-1] in ("python", "python3", "torchrun"):
            module = kept.index("-m") + 1
            if kept[module : module + 1] and kept[module].split(".")[0] == "kdcache":
                found.append((kept[module], kept[module + 1 :]))
    return found


def commands(page: pathlib.Path, page_snippets: list[Snippet] | None = None) -> list[Command]:
    """Every kdcache command of a page: fenced shell lines, inline ``kdcache ...`` code, and
    inline code naming a command without ``kdcache`` (`teach --dry-run`)."""
    page_snippets = snippets(page) if page_snippets is None else page_snippets
    variables = _assignments(page_snippets)
    found = []
    for snippet in page_snippets:
        shell = snippet.fenced and snippet.language in _SHELL_LANGUAGES
        if snippet.fenced and not shell:
            continue
        text = snippet.text
        tool = re.match(r"^([a-z_]+) --?[a-z]", text)
        if not snippet.fenced and _BARE.match(text) and not text.startswith("kdcache"):
            text = "kdcache " + text
        elif not snippet.fenced and tool and _is_bench_tool(tool.group(1)):
            text = "python -m kdcache.tools.bench." + text  # `teach_memory --images N`
        elif not snippet.fenced and not text.startswith(("kdcache ", "python")):
            continue
        text = re.sub(r"<([\w .-]+)>", lambda m: m.group(1).upper().replace(" ", "_"), text)
        for name, value in variables.items():
            text = re.sub(rf"\${{?{name}\b}}?", value, text)
        # a synopsis: [optional] parts, a|b (inline also a | b: a fenced line's | is a pipe)
        alternatives = r"\w\|\w" if snippet.fenced else r"\w\|\w|(?<!\S)\|(?!\S)"
        synopsis = bool(re.search(rf"[\[\]…]|\.\.\.|{alternatives}", text))
        if synopsis:
            text = re.sub(r"[\[\]]", "", text.replace("[options]", ""))
        for module, argv in _invocations(_words(text, pipes=not synopsis), pipes=not synopsis):
            found.append(Command(snippet, tuple(argv), synopsis, module))
    return found


def _is_bench_tool(name: str) -> bool:
    """A module of kdcache.tools.bench run on its own (`python -m kdcache.tools.bench.NAME`)."""
    return importlib.util.find_spec(f"kdcache.tools.bench.{name}") is not None


def _is_placeholder(word: str) -> bool:
    return bool(_PLACEHOLDER.search(word)) or word in ("", "|")


def _is_flag(word: str) -> bool:
    return word.startswith("-") and len(word) > 1 and not re.match(r"^-[\d.]", word)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _value_problems(flag: str, action: argparse.Action, value: str) -> list[str]:
    """A literal value (each of ``a|b`` alternatives) the option refuses: not among its choices,
    or not converted by its type."""
    problems = []
    for alternative in value.split("|"):
        if _is_placeholder(alternative):
            continue
        if action.choices is not None:
            if alternative not in [str(choice) for choice in action.choices]:
                choices = ", ".join(map(str, action.choices))
                problems.append(f"{flag} {alternative}: not one of its choices ({choices})")
        elif callable(action.type):
            try:
                action.type(alternative)
            except Exception as error:  # argparse's own contract: any error is a refusal
                problems.append(f"{flag} {alternative}: refused ({error})")
    return problems


def _arity(action: argparse.Action) -> tuple[int, int]:
    """The fewest and most words an option takes."""
    if action.nargs is None:
        return 1, 1
    if isinstance(action.nargs, int):
        return action.nargs, action.nargs
    return {"?": (0, 1), "*": (0, 99), "+": (1, 99)}.get(action.nargs, (0, 0))


def argument_problems(
    parser: argparse.ArgumentParser, words: list[str], *, whole: bool = True
) -> list[str]:
    """What a command's parser refuses among its words, by exact option name (argparse
    would take an abbreviation): unknown options, refused values, stray words; ``whole``:
    every option has its values (prose may name an option alone: `--views`)."""
    options = parser._option_string_actions
    takes_positionals = any(not a.option_strings for a in parser._actions)
    problems, index = [], 0
    while index < len(words):
        word = words[index]
        index += 1
        if word in ("|", "...", "…"):
            continue
        if not _is_flag(word):
            if not takes_positionals and not _is_placeholder(word):
                problems.append(f"{word}: `{parser.prog}` takes no argument here")
            continue
        flag, equals, value = word.partition("=")
        action = options.get(flag)
        if action is None:
            close = _closest(flag, options)
            problems.append(f"{flag}: no such option of `{parser.prog}`{close}")
            while index < len(words) and not _is_flag(words[index]):
                index += 1  # its values
            continue
        fewest, most = _arity(action)
        values = [value] if equals else []
        while not equals and len(values) < most and index < len(words):
            if _is_flag(words[index]) or words[index] == "|":
                break
            values.append(words[index])
            index += 1
        if whole and len(values) < fewest and not any(_is_placeholder(v) for v in values):
            problems.append(f"{flag}: takes {fewest} value(s), given {len(values)}")
        for value in values:
            problems += _value_problems(flag, action, value)
        if action.dest.startswith("plan_") and not problems:
            problems += _plan_problems(flag, action, values)
    return problems


def _plan_problems(flag: str, action: argparse.Action, values: list[str]) -> list[str]:
    """A plan option's literal values the view plan refuses (`--renderer gpu`): the plan
    checks them itself, after parsing."""
    if not values or any(_is_placeholder(v) for v in values):
        return []
    convert = action.type if callable(action.type) else str
    field = action.dest.removeprefix("plan_")
    candidates = values[0].split("|") if len(values) == 1 else [" ".join(values)]
    problems = []
    for candidate in candidates:
        converted = [convert(word) for word in candidate.split()]
        try:
            ViewPlan(**{field: converted[0] if action.nargs is None else tuple(converted)})
        except KdcacheError as error:
            problems.append(f"{flag} {candidate}: refused by the view plan ({error})")
    return problems


def _closest(flag: str, options) -> str:
    """ " (did you mean --x?)" for the option name nearest to ``flag``, if any is near."""
    close = difflib.get_close_matches(flag, [o for o in options if o.startswith("--")], 1)
    return f" (did you mean {close[0]}?)" if close else ""


def _target(argv: tuple[str, ...]) -> tuple[argparse.ArgumentParser | None, list[str], str]:
    """The parser a command line reaches (``kdcache``, ``kdcache CMD``, ``kdcache bench NAME``),
    the words left for it, or why none: an unknown command or benchmark."""
    parser, words = build_parser(), list(argv)
    for level in ("command", "benchmark"):
        choices = _subparsers(parser)
        if not choices or not words or _is_flag(words[0]):
            break
        name = words.pop(0)
        if _is_placeholder(name):  # `kdcache COMMAND --help`, `kdcache bench NAME`
            return None, words, ""
        if name not in choices:
            return None, words, f"no {level} {name!r} (the {level}s: {', '.join(choices)})"
        parser = choices[name]
    return parser, words, ""


def _parse_problem(command: Command) -> str:
    """Why the real command line refuses a whole command, placeholders given valid values."""
    parser, _, problem = _target(command.argv)
    if problem or parser is None:
        return problem
    argv = list(command.argv)
    for index in range(1, len(argv)):
        action = parser._option_string_actions.get(argv[index - 1].partition("=")[0])
        if action is not None and _is_placeholder(argv[index]) and not _is_flag(argv[index]):
            if action.choices is not None:
                argv[index] = str(next(iter(action.choices)))
            elif callable(action.type) and not _value_problems("", action, "1"):
                argv[index] = "1"  # a number stands for N, V, ...
    top = build_parser()
    shown = io.StringIO()
    with contextlib.redirect_stderr(shown), contextlib.redirect_stdout(io.StringIO()):
        try:
            _, unknown = top.parse_known_args(argv)
        except SystemExit:
            return shown.getvalue().strip().splitlines()[-1]
    return f"unrecognized arguments: {' '.join(unknown)}" if unknown else ""


def _module_flags(module: str) -> set[str] | None:
    """The options a ``python -m kdcache.tools.NAME`` tool defines: the option strings in its
    source and in the benchmark harness's shared options (read, not imported: some tools
    import torch before building their parser). None: no such module."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    harness = importlib.util.find_spec("kdcache.tools.bench.harness").origin
    sources = [pathlib.Path(spec.origin).read_text(), pathlib.Path(harness).read_text()]
    return {flag for text in sources for flag in re.findall(r"[\"'](--?[a-z][\w-]*)[\"']", text)}


def _module_problems(command: Command) -> list[str]:
    """A ``python -m kdcache.tools.NAME`` line's missing module or unknown options."""
    if re.search(r"\.[A-Z]+$", command.module):  # python -m kdcache.tools.bench.NAME
        return []
    flags = _module_flags(command.module)
    if flags is None:
        return [f"no module {command.module}"]
    used = [word.partition("=")[0] for word in command.argv if _is_flag(word)]
    return [f"{flag}: not an option of {command.module}" for flag in used if flag not in flags]


def command_problems(command: Command) -> list[str]:
    """One line per thing the code refuses in a documented command, naming page and line."""
    if command.module != "kdcache":
        return [f"{command.snippet.where()}: `{command.shown()}`: {problem}"
                for problem in _module_problems(command)]  # fmt: skip
    parser, words, problem = _target(command.argv)
    problems = [problem] if problem else []
    if parser is not None:
        problems += argument_problems(parser, words, whole=command.snippet.fenced)
    if not problems and command.snippet.fenced and not command.synopsis:
        problems += [p for p in [_parse_problem(command)] if p]
    return [f"{command.snippet.where()}: `{command.shown()}`: {p}" for p in problems]


def headings(page: pathlib.Path) -> list[tuple[int, str]]:
    """(line, text) of a page's headings outside fenced blocks."""
    found, fence = [], None
    for number, line in enumerate(page.read_text("utf-8").splitlines(), 1):
        opened = _FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None and (heading := _HEADING.match(line)):
            found.append((number, heading.group(1)))
    return found


def _section(page: pathlib.Path, line: int, page_headings: list[tuple[int, str]]) -> str:
    above = [text for number, text in page_headings if number <= line]
    return above[-1] if above else ""


def _parser_of(name: str) -> argparse.ArgumentParser | None:
    parser, _, problem = _target(tuple(name.split()))
    return None if problem else parser


def every_parser() -> dict[str, argparse.ArgumentParser]:
    """``kdcache CMD`` and ``kdcache bench NAME`` by name: ``shard``, ``bench teach``, ..."""
    found = {}
    for name, parser in _subparsers(build_parser()).items():
        benches = _subparsers(parser)
        found.update({f"{name} {bench}": sub for bench, sub in benches.items()} or {name: parser})
    return found


def option_spans(page: pathlib.Path) -> list[tuple[Snippet, str, list[str]]]:
    """Inline code naming an option (`--views V`, `--renderer cpu|cuda`), with the commands
    it must belong to: in the command reference, the command of its section (`## shard`,
    `### bench teach`: "all"); in a section listing options shared by several commands, any
    of them ("any"); elsewhere, any command."""
    page_headings, parsers = headings(page), every_parser()
    benches = [name for name in parsers if name.startswith("bench ")]
    shared = {"Plan options": ["teach", "train"], "Teacher options": ["teach", "train"],
              "Options the benchmarks share": benches}  # fmt: skip
    found = []
    for snippet in snippets(page):
        if snippet.fenced or not re.match(r"^--[a-z]", snippet.text):
            continue
        section = _section(page, snippet.line, page_headings)
        if page == COMMANDS_PAGE and section in parsers:
            found.append((snippet, "all", [section]))
        else:
            found.append((snippet, "any", shared.get(section, list(parsers))))
    return found


def option_problems(snippet: Snippet, rule: str, names: list[str]) -> list[str]:
    """What the named commands refuse in an option span (rule "all": each of them; "any":
    one of them must take it)."""
    words = _words(re.sub(r"[\[\]]", "", snippet.text), pipes=False)
    if words[0].partition("=")[0] in FOREIGN_OPTIONS:
        return []
    found = {name: argument_problems(_parser_of(name), words, whole=False) for name in names}
    if rule == "all":
        problems = [f"{p} (kdcache {name})" for name, ps in found.items() for p in ps]
    elif all(found.values()) and len(names) == len(every_parser()):
        options = {o for p in every_parser().values() for o in p._option_string_actions}
        problems = [f"no command takes it{_closest(words[0], options)}"]
    elif all(found.values()):
        problems = [
            f"no command of this section ({', '.join(names)}) takes it: "
            + "; ".join(f"kdcache {name}: {'; '.join(found[name])}" for name in names)
        ]
    else:
        problems = []
    return [f"{snippet.where()}: `{snippet.text}`: {problem}" for problem in problems]


def documented_options() -> dict[str, set[str]]:
    """The options the command reference names for each command, and the pages it sends
    readers to for shared options (plan options, teacher options)."""
    parsers = every_parser()
    found: dict[str, set[str]] = {name: set() for name in parsers}
    for page in doc_files():
        for snippet, rule, names in option_spans(page):
            if page != COMMANDS_PAGE and rule == "any" and len(names) == len(parsers):
                continue  # an option named in passing
            for word in _words(re.sub(r"[\[\]]", "", snippet.text), pipes=False):
                for name in names:
                    if word.partition("=")[0] in parsers[name]._option_string_actions:
                        found[name].add(word.partition("=")[0])
        for command in commands(page):
            parser, words, _ = _target(command.argv)
            name = next((n for n, p in parsers.items() if p is parser), None)
            if name and page == COMMANDS_PAGE:
                found[name].update(w.partition("=")[0] for w in words if _is_flag(w))
    return found


def undocumented_options() -> dict[str, list[str]]:
    """Each command's options the docs do not name (``--x``/``--no-x`` count as one)."""
    documented = documented_options()
    missing = {}
    for name, parser in every_parser().items():
        left = [
            action.option_strings[-1]
            for action in parser._actions
            if action.option_strings
            and not isinstance(action, argparse._HelpAction)
            and not documented[name] & set(action.option_strings)
        ]
        if left:
            missing[name] = left
    return missing


def problems(pages: list[pathlib.Path]) -> list[str]:
    """Every documented command or option the code refuses, one line each."""
    found = [p for page in pages for command in commands(page) for p in command_problems(command)]
    found += [
        problem
        for page in pages
        for snippet, rule, names in option_spans(page)
        for problem in option_problems(snippet, rule, names)
    ]
    return found


def reference_gaps() -> list[str]:
    """Commands and benchmarks without their section in the command reference or their
    place in its and README's tables; sections naming no command."""
    parsers, gaps = every_parser(), []
    titles = {text for _, text in headings(COMMANDS_PAGE)}
    gaps += [f"{COMMANDS_PAGE.name}: no section `{name}`" for name in parsers if name not in titles]
    for title in titles:
        if re.fullmatch(r"(bench )?[a-z]+", title) and title not in parsers:
            gaps.append(f"{COMMANDS_PAGE.name}: section `{title}` names no command")
    for page in (COMMANDS_PAGE, ROOT / "README.md"):
        text = page.read_text("utf-8")
        rows = set(re.findall(r"^\|\s*\[?`kdcache (\w+)[ `]", text, re.M))
        gaps += [f"{page.name}: no table row for `kdcache {name}`"
                 for name in _subparsers(build_parser()) if name not in rows]  # fmt: skip
        bench_row = re.search(r"^\|\s*\[?`kdcache bench NAME`.*$", text, re.M)
        listed = (
            set(re.findall(r"`(\w+)`", bench_row.group().split("|")[2])) if bench_row else set()
        )
        gaps += [f"{page.name}: the `kdcache bench NAME` row lacks `{name[6:]}`"
                 for name in parsers if name.startswith("bench ") and name[6:] not in listed]  # fmt: skip
    return gaps


def test_every_command_and_option_in_readme_and_docs_is_the_code_s():
    found = problems(doc_files())
    assert not found, "\n".join(["the code refuses:", *found])


def test_every_command_benchmark_and_option_is_in_the_command_reference():
    gaps = reference_gaps()
    gaps += [f"kdcache {n}: undocumented {', '.join(o)}" for n, o in undocumented_options().items()]
    assert not gaps, "\n".join(gaps)


def test_the_environment_variables_the_docs_name_are_the_ones_the_code_reads():
    def named(texts):
        return {v for text in texts for v in re.findall(r"\bKDCACHE_[A-Z_]+[A-Z]\b", text)}

    documented = named(page.read_text("utf-8") for page in doc_files())
    sources = [
        p
        for folder in ("api", "pipeline", "trainer", "tools")
        for p in (ROOT / folder).rglob("*.py")
    ]
    read = {v for p in sources for v in re.findall(r"[\"'](KDCACHE_[A-Z_]+)[\"']", p.read_text())}
    assert documented == read, f"docs only: {documented - read}; code only: {read - documented}"


BROKEN_PAGE = """# A page

```bash
kdcache shard --sorce photos --out data
kdcache teach --data data --cache c.zarr --teacher t.pth --views
kdcache distil --data data
kdcache train --data data --out run --model resnet10t --kd sof | tee log
python -m kdcache.tools.bench.help_time --repaets 5
kdcache teach --cache c.zarr --teacher t.pth
```

Inline, `kdcache teach --data DATA --view 4` and `train --renderer cpu|gpu`, and
`kdcache bench teech`; `kdcache inspect CACHE --json` is right.

| option | what it sets |
|---|---|
| `--crop-scal LOW HIGH` | a typo |
"""


def test_a_wrong_command_option_or_value_is_reported_with_page_line_and_option(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(BROKEN_PAGE)
    found = [line.split(": ", 2)[0::2] for line in problems([page])]
    expected = [  # the messages' starts: the lists they go on with follow the code
        ("page.md:4", "--sorce: no such option of `kdcache shard` (did you mean --source?)"),
        ("page.md:5", "--views: takes 1 value(s), given 0"),
        ("page.md:6", "no command 'distil' (the commands: shard, index, teach, train,"),
        ("page.md:7", "--kd sof: not one of its choices (none, soft, hard)"),
        ("page.md:8", "--repaets: not an option of kdcache.tools.bench.help_time"),
        ("page.md:9", "kdcache teach: error: the following arguments are required: --data"),
        ("page.md:12", "--view: no such option of `kdcache teach` (did you mean --views?)"),
        ("page.md:12", "--renderer gpu: refused by the view plan (plan.renderer: 'gpu' is not"),
        ("page.md:13", "no benchmark 'teech' (the benchmarks: teach, train, kd,"),
        ("page.md:17", "no command takes it (did you mean --crop-scale?)"),
    ]
    assert len(found) == len(expected), found
    for (where, message), (at, start) in zip(found, expected, strict=True):
        assert where == at and message.startswith(start), (where, message)


if __name__ == "__main__":
    found = problems(doc_files()) + reference_gaps()
    found += [
        f"kdcache {n}: undocumented {', '.join(o)}" for n, o in undocumented_options().items()
    ]
    print("\n".join(found) or "every documented command and option is the code's")
    sys.exit(1 if found else 0)
