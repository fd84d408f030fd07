"""Loads a project's flows and templates once, at start: the only file reading in the flow engine.

Layout (see ``docs/flows.md``)::

    <project>/flows/*.yaml            one flow version per file (e.g. consent.yaml)
    <project>/flows/archive/*.yaml    older versions kept for conversations that started on them
    <project>/templates/<locale>/*.j2 one message template per file
    <project>/whatsapp_templates.yaml the approved WhatsApp templates (flow sends' ``fallback``)

Every version present is compiled (one ``transitions.Machine`` each) and kept: a conversation stays on
the version it started with; new conversations get the newest. :func:`load_catalog` refuses to start
when the checker finds an error (:class:`bot.errors.FlowError` listing them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bot.core.audience import CampaignError, TemplateDeclaration, declarations_from
from bot.core.conversation import Conversation
from bot.core.flowspec import FlowSpec, Problem, read_flow
from bot.core.lint import lint_flow
from bot.core.machine import CompiledFlow, FlowFamily, compile_flow
from bot.core.project import Project
from bot.core.rendering import TemplateSet, TemplateSource
from bot.errors import FlowError


@dataclass(frozen=True, slots=True)
class Catalog:
    """Every flow family of a project by id, plus the compiled templates they share."""

    flows: dict[str, FlowFamily]
    templates: TemplateSet
    problems: tuple[Problem, ...] = field(default=())

    def family(self, flow_id: str) -> FlowFamily:
        try:
            return self.flows[flow_id]
        except KeyError:
            raise FlowError(f"no flow with id `{flow_id}`", path="flows") from None

    def newest(self, flow_id: str) -> CompiledFlow:
        return self.family(flow_id).newest

    def for_conversation(self, conversation: Conversation) -> FlowFamily:
        """The family to pass to ``decide`` (it picks the conversation's own version)."""
        return self.family(conversation.flow_id)


def flow_files(project_dir: Path) -> list[Path]:
    """The flow files of a project: ``flows/*.yaml`` and ``flows/archive/*.yaml`` (never ``flows/tests``)."""
    root = project_dir / "flows"
    files = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml"))
    archive = root / "archive"
    files += sorted(archive.glob("*.yaml")) + sorted(archive.glob("*.yml"))
    return files


def template_sources(project_dir: Path) -> list[TemplateSource]:
    """Every ``templates/<locale>/<name>.j2`` of a project."""
    out: list[TemplateSource] = []
    root = project_dir / "templates"
    if not root.is_dir():
        return out
    for loc_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(loc_dir.glob("*.j2")):
            out.append(TemplateSource(loc_dir.name, f.stem, f.read_text(encoding="utf-8"), _rel(f, project_dir)))
    return out


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def read_specs(project_dir: Path) -> tuple[list[FlowSpec], list[Problem]]:
    specs: list[FlowSpec] = []
    problems: list[Problem] = []
    for f in flow_files(project_dir):
        spec, found = read_flow(f.read_text(encoding="utf-8"), _rel(f, project_dir))
        problems.extend(found)
        if spec is not None:
            specs.append(spec)
    return specs, problems


APPROVED_TEMPLATES_FILE = "whatsapp_templates.yaml"


def approved_templates(project_dir: Path) -> tuple[list[TemplateDeclaration], list[Problem]]:
    """The approved WhatsApp templates a project declares (``whatsapp_templates.yaml``; none when the
    file is absent), and what is wrong with the file."""
    path = project_dir / APPROVED_TEMPLATES_FILE
    if not path.is_file():
        return [], []
    try:
        return declarations_from(yaml.safe_load(path.read_text(encoding="utf-8")), path.name), []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        return [], [Problem(path.name, line, "error", f"malformed YAML: {exc}", "")]
    except CampaignError as exc:
        return [], [Problem(path.name, 1, "error", str(exc), "see docs/campaigns.md for the format")]


def build_catalog(
    specs: Iterable[FlowSpec],
    sources: Iterable[TemplateSource],
    project: Project,
    strict: bool = True,
    approved: Iterable[TemplateDeclaration] = (),
) -> Catalog:
    """Compile specs and templates (pure apart from nothing: handy for tests). ``approved`` are the
    declared WhatsApp templates flow sends may fall back to. With ``strict`` any lint error raises
    :class:`FlowError`."""
    spec_list = list(specs)
    default = spec_list[0].default_locale if spec_list else project.default_locale
    templates = TemplateSet(sources, default, approved)
    problems: list[Problem] = list(templates.problems)
    for spec in spec_list:
        problems.extend(lint_flow(spec, templates, project))
    errors = [p for p in problems if p.severity == "error"]
    if strict and errors:
        raise FlowError("; ".join(p.format() for p in errors[:10]), path="flows")
    by_id: dict[str, list[CompiledFlow]] = {}
    for spec in spec_list:
        by_id.setdefault(spec.id, []).append(compile_flow(spec, templates))
    return Catalog({k: FlowFamily(v) for k, v in by_id.items()}, templates, tuple(problems))


def load_catalog(project_dir: Path, project: Project, strict: bool = True) -> Catalog:
    """Read, check and compile every flow version and template of ``project_dir`` (call once, at start)."""
    specs, problems = read_specs(project_dir)
    errors = [p for p in problems if p.severity == "error"]
    if strict and errors:
        raise FlowError("; ".join(p.format() for p in errors[:10]), path="flows")
    if not specs and strict:
        raise FlowError(f"no flow files under {project_dir / 'flows'}", path="flows")
    approved, approved_problems = approved_templates(project_dir)
    problems.extend(approved_problems)
    if strict and approved_problems:
        raise FlowError("; ".join(p.format() for p in approved_problems), path=APPROVED_TEMPLATES_FILE)
    catalog = build_catalog(specs, template_sources(project_dir), project, strict, approved)
    return Catalog(catalog.flows, catalog.templates, (*problems, *catalog.problems))
