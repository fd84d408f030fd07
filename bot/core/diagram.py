"""State diagrams of a flow: Mermaid text and a self-drawn SVG (no external binaries).

Both show the declared states and transitions, the built-in opt-out and re-subscribe edges (drawn once,
from an "any state" node), and ``anywhere`` transitions the same way. Internal transitions (no state
change) are listed under their state. The SVG uses a layered layout: layer = shortest distance from the
initial state.
"""

from __future__ import annotations

from collections import deque
from html import escape

from bot.core.flowspec import OPTED_OUT, FlowSpec, TransitionSpec
from bot.core.machine import builtin_transitions

ANY = "any state"


def _label(t: TransitionSpec) -> str:
    guard = f" [{', '.join(t.when)}]" if t.when else ""
    return f"{t.trigger}{guard}"


def edges(spec: FlowSpec) -> list[tuple[str, str, str]]:
    """(source, dest, label) for every state-changing transition; global ones start at :data:`ANY`."""
    out: list[tuple[str, str, str]] = []
    for state in spec.states.values():
        out += [(state.name, t.dest, _label(t)) for t in state.on if t.dest is not None]
    out += [(ANY, t.dest, _label(t)) for t in spec.anywhere if t.dest is not None]
    out += [(ANY, t.dest, f"{t.trigger} (built in)") for t in builtin_transitions(spec) if t.dest is not None]
    return out


def mermaid(spec: FlowSpec) -> str:
    """A Mermaid ``stateDiagram-v2`` of the flow."""
    lines = ["stateDiagram-v2", f"    [*] --> {spec.initial}", f'    state "{ANY}" as any_state']
    for src, dest, label in edges(spec):
        a = "any_state" if src == ANY else src
        lines.append(f"    {a} --> {dest}: {label}")
    for state in spec.states.values():
        internal = [_label(t) for t in state.on if t.dest is None]
        if internal:
            lines.append(f"    note right of {state.name}: internal: {', '.join(internal)}")
    return "\n".join(lines) + "\n"


def _layers(spec: FlowSpec) -> list[list[str]]:
    names = [*spec.states, OPTED_OUT]
    local: dict[str, list[str]] = {n: [] for n in names}
    for src, dest, _ in edges(spec):
        if src != ANY:
            local[src].append(dest)
    depth = {spec.initial: 0}
    queue = deque([spec.initial])
    while queue:
        cur = queue.popleft()
        for nxt in local.get(cur, []):
            if nxt not in depth:
                depth[nxt] = depth[cur] + 1
                queue.append(nxt)
    deepest = max(depth.values(), default=0)
    for n in names:  # reached only through global edges: after the deepest layer
        depth.setdefault(n, deepest + 1)
    layers: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    for n in names:
        layers[depth[n]].append(n)
    return layers


def svg(spec: FlowSpec) -> str:
    """The state diagram as a standalone SVG document."""
    box_w, box_h, gap_x, gap_y, margin = 150, 40, 40, 90, 30
    layers = _layers(spec)
    pos: dict[str, tuple[float, float]] = {}
    width = max(len(layer) for layer in layers) * (box_w + gap_x) + 2 * margin + box_w + gap_x
    for i, layer in enumerate(layers):
        row_w = len(layer) * (box_w + gap_x) - gap_x
        x0 = (width - box_w - gap_x - row_w) / 2
        for j, name in enumerate(layer):
            pos[name] = (x0 + j * (box_w + gap_x), margin + 40 + i * (box_h + gap_y))
    pos[ANY] = (width - margin - box_w, margin)
    height = margin * 2 + 40 + len(layers) * (box_h + gap_y)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="11">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/>'
        "</marker></defs>",
        f"<title>{escape(spec.id)} v{escape(spec.version)}</title>",
    ]
    for k, (src, dest, label) in enumerate(edges(spec)):
        (x1, y1), (x2, y2) = pos[src], pos[dest]
        sx, sy = x1 + box_w / 2, y1 + box_h
        dx, dy = x2 + box_w / 2, y2
        if src == dest:
            out.append(
                f'<path d="M {x1 + box_w} {y1 + 10} c 30 -10 30 30 0 20" fill="none" stroke="#555" '
                f'marker-end="url(#arrow)"/>'
            )
            out.append(f'<text x="{x1 + box_w + 28}" y="{y1 + 8}">{escape(label)}</text>')
            continue
        if dy <= sy:  # upward or same layer: leave from the top
            sy, dy = y1, y2 + box_h
        colour = "#b00" if dest == OPTED_OUT else "#555"
        out.append(
            f'<line x1="{sx:.0f}" y1="{sy:.0f}" x2="{dx:.0f}" y2="{dy:.0f}" stroke="{colour}" '
            f'stroke-width="1" marker-end="url(#arrow)"/>'
        )
        mx, my = (sx + dx) / 2, (sy + dy) / 2 + (k % 3) * 11 - 11
        out.append(f'<text x="{mx:.0f}" y="{my:.0f}" text-anchor="middle" fill="{colour}">{escape(label)}</text>')
    for name, (x, y) in pos.items():
        fill = "#fde8e8" if name == OPTED_OUT else "#eef3fb" if name != ANY else "#f4f4f4"
        stroke = "#333" if name != spec.initial else "#0a5"
        out.append(
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{box_w}" height="{box_h}" rx="8" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="{2 if name == spec.initial else 1}"/>'
        )
        out.append(
            f'<text x="{x + box_w / 2:.0f}" y="{y + box_h / 2 + 4:.0f}" text-anchor="middle" '
            f'font-weight="bold">{escape(name)}</text>'
        )
        state = spec.states.get(name)
        internal = [t.trigger for t in state.on if t.dest is None] if state else []
        if internal:
            out.append(
                f'<text x="{x + box_w / 2:.0f}" y="{y + box_h + 12:.0f}" text-anchor="middle" '
                f'fill="#777">({escape(", ".join(internal))})</text>'
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"
