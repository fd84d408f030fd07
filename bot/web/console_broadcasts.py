"""Campaigns in the support console: a supervisor page per campaign with live progress, a JSON progress
endpoint, and cancel.

:func:`add_broadcast_routes` mounts ``/console/campaigns`` on the application that :func:`add_console`
already set up (call it after). It reuses the console's own guard (session cookie, idle timeout, CSRF
on every POST, 401 for JSON without a session), its templates (``console/base.html``) and its audit
trail; it adds no authentication of its own. Supervisors and privacy officers see campaigns; agents
get 403. Routes:

- ``GET /console/campaigns``: campaigns, newest first;
- ``GET /console/campaigns/{id}``: counts, exclusions by reason, errors by code, a progress bar that
  refreshes itself (``progress.js`` polls the JSON endpoint every 2 s);
- ``GET /console/campaigns/{id}/progress.json``: the last progress snapshot the run saved, the live
  counts by state and delivery;
- ``POST /console/campaigns/{id}/cancel``: cancel (a running run stops before its next message).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jinja2
from aiohttp import web

from bot.store.broadcasts import Broadcasts, Campaign, CampaignState, RecipientState
from bot.store.privacy import Role
from bot.web.console import CONSOLE, PREFIX, VIEWER, Console, guard, security_headers

BROADCASTS: web.AppKey[Broadcasts] = web.AppKey("broadcasts", Broadcasts)
ROLES = frozenset({str(Role.SUPERVISOR), str(Role.PRIVACY)})

LIST = """{% extends "console/base.html" %}
{% block main %}
<h1>Campaigns <span class="count">{{ campaigns|length }}</span></h1>
<table class="list">
<thead><tr><th>Campaign</th><th>State</th><th>Template</th><th>Purpose</th><th>Sent</th><th>Failed</th>
<th>Excluded</th><th>Created</th></tr></thead>
<tbody>
{% for c in campaigns %}
<tr><td><a href="{{ PREFIX }}/campaigns/{{ c.id }}">{{ c.name }}</a> <span class="muted mono">{{ c.id }}</span></td>
<td>{{ c.state }}</td><td class="mono">{{ c.template.name }} ({{ c.template.language }})</td>
<td>{{ c.purpose }}</td><td>{{ c.progress.get("accepted", 0) }}</td><td>{{ c.progress.get("failed", 0) }}</td>
<td>{{ c.progress.get("excluded", 0) }}</td>
<td>{{ c.created_at|utc }}</td></tr>
{% else %}
<tr><td colspan="8" class="muted">No campaigns yet: <code>consentbot broadcast create --help</code></td></tr>
{% endfor %}
</tbody></table>
{% endblock %}"""

DETAIL = """{% extends "console/base.html" %}
{% block main %}
<h1>{{ c.name }} <span class="muted mono">{{ c.id }}</span></h1>
<div class="card" id="campaign" data-progress="{{ PREFIX }}/campaigns/{{ c.id }}/progress.json">
  <p><strong data-field="state">{{ c.state }}</strong>
  · template <span class="mono">{{ c.template.name }} ({{ c.template.language }})</span>
  · purpose {{ c.purpose }}{% if c.segments %} · segments
  {% for k, v in c.segments %}<span class="mono">{{ k }}={{ v }}</span> {% endfor %}{% endif %}
  · cap {{ c.rate|round(0)|int }} messages/s</p>
  <progress max="{{ p.total or 1 }}" value="{{ p.final }}" data-field="bar">{{ p.percent }} %</progress>
  <p><span data-field="percent">{{ p.percent }}</span> % ·
     sent <strong data-field="accepted">{{ p.accepted }}</strong> ·
     failed <strong data-field="failed">{{ p.failed }}</strong> ·
     excluded <strong data-field="excluded">{{ p.excluded }}</strong> ·
     pending <span data-field="pending">{{ p.pending }}</span> of <span data-field="total">{{ p.total }}</span> ·
     <span data-field="rate">{{ p.rate }}</span>/s · ETA <span data-field="eta">{{ p.eta }}</span></p>
  <p>delivered <span data-field="delivered">{{ p.delivered }}</span>
     · read <span data-field="read">{{ p.read }}</span></p>
</div>
<div class="cards">
<div class="card"><h2>Excluded, by reason</h2>
<table class="list"><tbody>{% for reason, n in p.reasons.items() %}
<tr><td class="mono">{{ reason }}</td><td>{{ n }}</td></tr>
{% else %}<tr><td class="muted">none</td></tr>{% endfor %}</tbody></table></div>
<div class="card"><h2>Failed, by error code</h2>
<table class="list"><tbody>{% for code, n in p.errors.items() %}
<tr><td class="mono">{{ code }}</td><td>{{ n }}</td></tr>
{% else %}<tr><td class="muted">none</td></tr>{% endfor %}</tbody></table></div>
</div>
{% if c.state not in ("done", "cancelled") %}
<form method="post" action="{{ PREFIX }}/campaigns/{{ c.id }}/cancel">
  <input type="hidden" name="_csrf" value="{{ csrf }}">
  <button type="submit" class="danger">Cancel campaign</button>
  <span class="muted">A running run stops before its next message;
  <code>consentbot broadcast run {{ c.id }}</code> resumes it.</span>
</form>
{% endif %}
<script src="{{ PREFIX }}/campaigns/progress.js" defer></script>
{% endblock %}"""

SCRIPT = """(function () {
  var box = document.getElementById("campaign");
  if (!box) { return; }
  function set(name, value) {
    var el = box.querySelector('[data-field="' + name + '"]');
    if (el) { el.textContent = String(value); }
  }
  function tick() {
    var url = box.getAttribute("data-progress");
    fetch(url, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (p) {
        if (!p) { return; }
        ["state", "accepted", "failed", "excluded", "pending", "total", "rate", "eta", "percent",
         "delivered", "read"].forEach(function (k) { set(k, p[k]); });
        var bar = box.querySelector('[data-field="bar"]');
        if (bar) { bar.max = Math.max(1, p.total); bar.value = p.final; }
        if (p.state !== "done" && p.state !== "cancelled") { setTimeout(tick, 2000); }
      })
      .catch(function () { setTimeout(tick, 5000); });
  }
  setTimeout(tick, 2000);
})();
"""


def _eta(seconds: Any) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


async def progress_of(broadcasts: Broadcasts, campaign: Campaign) -> dict[str, Any]:
    """Live counts (from the recipient records) joined with the run's last snapshot (rate, ETA)."""
    tally = await broadcasts.tally(campaign.id)
    snap = dict(campaign.progress)
    accepted, failed = tally.state(RecipientState.ACCEPTED), tally.state(RecipientState.FAILED)
    excluded = tally.state(RecipientState.EXCLUDED)
    final = accepted + failed + excluded
    total = tally.total
    d = tally.delivery
    running = campaign.state is CampaignState.RUNNING and campaign.run_until is not None and \
        campaign.run_until > datetime.now(UTC)
    return {
        "campaign": campaign.id, "state": str(campaign.state), "running": running, "total": total, "final": final,
        "accepted": accepted, "failed": failed + int(d.get("failed", 0)), "excluded": excluded,
        "pending": tally.state(RecipientState.PENDING) + tally.state(RecipientState.SENDING),
        "percent": int(100 * final / total) if total and campaign.audience_done else 0,
        "delivered": sum(int(d.get(s, 0)) for s in ("delivered", "read", "played")),
        "read": sum(int(d.get(s, 0)) for s in ("read", "played")),
        "reasons": dict(sorted(tally.reasons.items())), "errors": dict(sorted(tally.errors.items())),
        "rate": snap.get("rate", 0.0) if running else 0.0, "target_rate": campaign.rate,
        "eta": _eta(snap.get("eta_seconds")) if running else "--:--", "audience_done": campaign.audience_done,
    }


def _allowed(request: web.Request) -> bool:
    viewer = request.get(VIEWER)
    return viewer is not None and viewer.role in ROLES


def _render(request: web.Request, source: str, title: str, **context: Any) -> web.Response:
    console: Console = request.config_dict[CONSOLE]
    viewer = request[VIEWER]
    template = _templates(console).get(source)
    if template is None:
        template = _templates(console)[source] = console.env.from_string(source)
    html = template.render(viewer=viewer, csrf=viewer.session.csrf, can_audit=viewer.can("audit"),
                           can_privacy=viewer.can("privacy"), title=title, nav="campaigns", **context)
    response = web.Response(text=html, content_type="text/html", charset="utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response


_COMPILED: dict[int, dict[str, jinja2.Template]] = {}


def _templates(console: Console) -> dict[str, jinja2.Template]:
    return _COMPILED.setdefault(id(console), {})


async def _campaign_or_404(request: web.Request) -> Campaign:
    campaign = await request.config_dict[BROADCASTS].get(request.match_info["id"])
    if campaign is None:
        raise web.HTTPNotFound(text="no such campaign")
    return campaign


async def campaigns_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.config_dict[CONSOLE]
    if not _allowed(request):
        return console.deny(request, "Campaigns are for supervisors.")
    campaigns = await request.config_dict[BROADCASTS].recent(200)
    await console.audit(request, "campaigns.list")
    return _render(request, LIST, "Campaigns", campaigns=campaigns)


async def campaign_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.config_dict[CONSOLE]
    if not _allowed(request):
        return console.deny(request, "Campaigns are for supervisors.")
    campaign = await _campaign_or_404(request)
    p = await progress_of(request.config_dict[BROADCASTS], campaign)
    await console.audit(request, "campaign.view", campaign.id)
    return _render(request, DETAIL, campaign.name, c=campaign, p=p)


async def progress_json(request: web.Request) -> web.StreamResponse:
    if not _allowed(request):
        return web.json_response({"error": "campaigns are for supervisors"}, status=403)
    campaign = await _campaign_or_404(request)
    response = web.json_response(await progress_of(request.config_dict[BROADCASTS], campaign))
    response.headers["Cache-Control"] = "no-store"
    return response


async def cancel(request: web.Request) -> web.StreamResponse:
    console: Console = request.config_dict[CONSOLE]
    if not _allowed(request):
        return console.deny(request, "Only supervisors may cancel a campaign.")
    campaign = await _campaign_or_404(request)
    if campaign.state is not CampaignState.DONE:
        await request.config_dict[BROADCASTS].set_state(campaign.id, CampaignState.CANCELLED, console.clock())
    await console.audit(request, "campaign.cancel", campaign.id)
    raise web.HTTPSeeOther(f"{PREFIX}/campaigns/{campaign.id}")


async def script(request: web.Request) -> web.StreamResponse:
    return web.Response(text=SCRIPT, content_type="application/javascript", headers={"Cache-Control": "no-cache"})


def add_broadcast_routes(app: web.Application, broadcasts: Broadcasts) -> None:
    """Mount ``/console/campaigns`` on ``app`` (after :func:`bot.web.console.add_console`: the console's
    guard and session checks protect every route)."""
    if CONSOLE not in app:
        raise RuntimeError("add_broadcast_routes: call bot.web.console.add_console on this application first")
    sub = web.Application(middlewares=[security_headers, guard])
    sub[BROADCASTS] = broadcasts
    r = sub.router
    r.add_get("", campaigns_page, name="campaigns")
    r.add_get("/", campaigns_page, name="campaigns_slash")
    r.add_get("/progress.js", script, name="campaigns_script")
    r.add_get("/{id}", campaign_page, name="campaign")
    r.add_get("/{id}/progress.json", progress_json, name="campaign_progress")
    r.add_post("/{id}/cancel", cancel, name="campaign_cancel")
    app.add_subapp(f"{PREFIX}/campaigns", sub)
