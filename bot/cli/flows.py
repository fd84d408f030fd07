"""``consentbot flows``: tools for flow authors.

- ``flows check [PATH]``: schema validation and lints; one line per problem
  ``file:line: error|warning: message (hint: ...)``; exit code 1 on any error.
- ``flows graph FLOW [--format mermaid|svg]``: the state diagram on stdout.
- ``flows test [PATH]``: run the scenario files ``flows/tests/*.yaml`` against the real engine.

PATH is a project folder (default: the current one) or one file inside it. The project's settings
come from its ``consentbot.yaml``; without one the checker uses a sample project and says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bot.core.diagram import mermaid, svg
from bot.core.flowspec import FlowSpec, Problem, read_flow
from bot.core.project import Project
from bot.core.sample import SAMPLE_PROJECT
from bot.core.scenario import run_scenarios
from bot.errors import BotError
from bot.runtime.catalog import approved_templates, build_catalog, read_specs, template_sources

PROJECT_FILE = "consentbot.yaml"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("flows", help="flows: check them, draw them, run their scenarios")
    fsub = p.add_subparsers(dest="flows_command", metavar="ACTION", required=True)
    check = fsub.add_parser("check", help="validate flows and templates (exit 1 on any error)")
    check.add_argument("path", nargs="?", default=".", help="project folder or flow file (default: .)")
    check.set_defaults(func=cmd_check)
    graph = fsub.add_parser("graph", help="print a flow's state diagram")
    graph.add_argument("flow", help="flow id (e.g. consent) or a flow file")
    graph.add_argument("--format", choices=("mermaid", "svg"), default="mermaid")
    graph.add_argument("--project", default=".", help="project folder (default: .)")
    graph.add_argument("--version", dest="flow_version", default=None, help="flow version (default: newest)")
    graph.set_defaults(func=cmd_graph)
    test = fsub.add_parser("test", help="run the scenario files flows/tests/*.yaml")
    test.add_argument("path", nargs="?", default=".", help="project folder or scenario file (default: .)")
    test.set_defaults(func=cmd_test)


def project_dir_of(path: Path) -> Path:
    """The project folder for a path: the folder itself, or the project a file under flows/ belongs to."""
    if path.is_dir():
        return path
    parent = path.resolve().parent
    for candidate in (parent, parent.parent, parent.parent.parent):
        if (candidate / PROJECT_FILE).exists() or ((candidate / "flows").is_dir() and candidate != parent):
            return candidate
    return parent


def load_project_for(project_dir: Path) -> tuple[Project, str]:
    """The project's settings, or the sample project (with a note) when there is no consentbot.yaml."""
    if not (project_dir / PROJECT_FILE).exists():
        return SAMPLE_PROJECT, f"note: no {PROJECT_FILE} in {project_dir}: checking against the sample project"
    from bot.settings import load_project

    return load_project(project_dir), ""


def _print_problems(problems: list[Problem]) -> int:
    order = sorted(problems, key=lambda p: (p.file, p.line, p.severity != "error"))
    for p in order:
        print(p.format())
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    print(f"{errors} error(s), {warnings} warning(s)", file=sys.stderr)
    return 1 if errors else 0


def _opened(path: Path) -> tuple[Path, Project] | None:
    """The project folder ``path`` belongs to and its project (a note on stderr when it is the sample
    project); None, after saying so, when ``path`` does not exist."""
    if not path.exists():
        print(f"consentbot: {path}: no such file or folder", file=sys.stderr)
        return None
    project_dir = project_dir_of(path)
    project, note = load_project_for(project_dir)
    if note:
        print(note, file=sys.stderr)
    return project_dir, project


def cmd_check(args: argparse.Namespace) -> int:
    path = Path(args.path)
    opened = _opened(path)
    if opened is None:
        return 2
    project_dir, project = opened
    if path.is_file():
        spec, problems = read_flow(path.read_text(encoding="utf-8"), str(path))
        specs: list[FlowSpec] = [spec] if spec is not None else []
    else:
        specs, problems = read_specs(project_dir)
        if not specs and not problems:
            problems = [Problem(str(project_dir / "flows"), 1, "error", "no flow files found", "add flows/<id>.yaml")]
    approved, approved_problems = approved_templates(project_dir)
    catalog = build_catalog(specs, template_sources(project_dir), project, strict=False, approved=approved)
    return _print_problems([*problems, *approved_problems, *catalog.problems])


def cmd_graph(args: argparse.Namespace) -> int:
    candidate = Path(args.flow)
    if candidate.is_file():
        spec, problems = read_flow(candidate.read_text(encoding="utf-8"), str(candidate))
        if spec is None:
            return _print_problems(problems)
    else:
        specs, problems = read_specs(Path(args.project))
        matching = [s for s in specs if s.id == args.flow and (args.flow_version in (None, s.version))]
        if not matching:
            known = ", ".join(sorted({f"{s.id} v{s.version}" for s in specs})) or "none"
            print(f"consentbot: no flow `{args.flow}` (known: {known})", file=sys.stderr)
            return 1
        from bot.core.machine import version_key

        spec = max(matching, key=lambda s: version_key(s.version))
    sys.stdout.write(svg(spec) if args.format == "svg" else mermaid(spec))
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    path = Path(args.path)
    opened = _opened(path)
    if opened is None:
        return 2
    project_dir, project = opened
    try:
        specs, problems = read_specs(project_dir)
        approved, approved_problems = approved_templates(project_dir)
        errors = [p for p in (*problems, *approved_problems) if p.severity == "error"]
        if errors:
            return _print_problems(errors)
        catalog = build_catalog(specs, template_sources(project_dir), project, strict=True, approved=approved)
    except BotError as exc:
        print(f"consentbot: {exc}", file=sys.stderr)
        return 1
    files = [path] if path.is_file() else sorted((project_dir / "flows" / "tests").glob("*.yaml"))
    if not files:
        print(f"consentbot: no scenario files under {project_dir / 'flows' / 'tests'}", file=sys.stderr)
        return 1
    total = failed = 0
    for f in files:
        for result in run_scenarios(f.read_text(encoding="utf-8"), _rel(f, project_dir), catalog.flows, project):
            total += 1
            if result.passed:
                print(f"ok    {result.file}:{result.line}: {result.name}")
            else:
                failed += 1
                print(f"FAIL  {result.file}:{result.line}: {result.name}")
                for line in result.failures:
                    print(f"      {line}")
    print(f"{total - failed} passed, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)
