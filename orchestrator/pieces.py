"""What one spot of a playbook or an inventory renders into: a step, a
drain, a health check, a version probe, for one host's template context.

`orchestrator.procedure` decides for which hosts these run (once per
distinct set of values read); here is only how a spec becomes a plan
value, and how a template that fails becomes a Problem located at its
spot and naming the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator import model
from orchestrator.errors import Problem, TemplateError
from orchestrator.inventory import Inventory
from orchestrator.playbook import Step as StepSpec
from orchestrator.source import Document, PathKey
from orchestrator.templating import Flavour, Namespace, Templates


@dataclass(slots=True)
class Renderer:
    """Renders templates, turning failures into located Problems (one per spot)."""

    doc: Document
    problems: list[Problem]
    seen: set[tuple[str, PathKey]]
    templates: Templates

    def __call__(
        self, source: str, ctx: dict[str, Any], path: PathKey, host: str, flavour: Flavour = "text"
    ) -> str:
        try:
            return self.templates.render(source, ctx, flavour)
        except TemplateError as exc:
            self.report(path, f"{exc.message} (for host {host})")
            return ""

    def many(
        self,
        items: Sequence[tuple[str, PathKey]],
        ctx: dict[str, Any],
        host: str,
        flavour: Flavour = "text",
    ) -> list[str]:
        """Several templates of one flavour: rendered together when Jinja
        allows, else one by one (which also locates a failure)."""
        together = self.templates.render_all(tuple(s for s, _ in items), ctx, flavour)
        if together is not None:
            return together
        return [self(source, ctx, path, host, flavour) for source, path in items]

    def report(self, path: PathKey, message: str) -> None:
        key = (self.doc.name, path)
        if key not in self.seen:
            self.seen.add(key)
            self.problems.append(self.doc.problem(path, message))


def step_sources(spec: StepSpec) -> tuple[str | None, ...]:
    undo = spec.undo if isinstance(spec.undo, str) or spec.undo is None else spec.undo.run
    config = spec.config
    if config is None:
        return (spec.name, spec.run, undo, spec.check)
    value = None if config.value is None else _scalar(config.value)
    return (spec.name, config.file, config.section, config.key, value)


def step(
    spec: StepSpec,
    path: PathKey,
    render: Renderer,
    ctx: dict[str, Any],
    host: str,
    *,
    inventory: Inventory,
    become: bool,
) -> model.Step:
    timeout = spec.timeout if spec.timeout is not None else inventory.ssh.command_timeout
    action: model.RunAction | model.ConfigAction | model.WaitAction
    if spec.run is not None:
        action = model.RunAction(
            command=render(spec.run, ctx, (*path, "run"), host, "shell"),
            ok_exit=tuple(spec.ok_exit),
            repeat_while_exit=tuple(spec.repeat_while_exit),
            repeat_interval=spec.repeat_interval,
            repeat_max=spec.repeat_max,
            timeout=timeout,
        )
        default_name = action.command
    elif spec.config is not None:
        c = spec.config
        value = None if c.value is None else _scalar(c.value)
        action = model.ConfigAction(
            file=render(c.file, ctx, (*path, "config", "file"), host),
            section=render(c.section, ctx, (*path, "config", "section"), host),
            key=render(c.key, ctx, (*path, "config", "key"), host),
            value=None if value is None else render(value, ctx, (*path, "config", "value"), host),
        )
        shown = "absent" if action.value is None else action.value
        default_name = f"config {action.file} [{action.section}] {action.key} = {shown}"
    else:
        action = model.WaitAction(seconds=spec.wait or 0.0)
        default_name = f"wait {action.seconds:g}s"
    undo: model.RunAction | None = None
    if isinstance(spec.undo, str):
        undo = model.RunAction(
            command=render(spec.undo, ctx, (*path, "undo"), host, "shell"), timeout=timeout
        )
    elif spec.undo is not None:
        undo = model.RunAction(
            command=render(spec.undo.run, ctx, (*path, "undo", "run"), host, "shell"),
            ok_exit=tuple(spec.undo.ok_exit),
            timeout=spec.undo.timeout if spec.undo.timeout is not None else timeout,
        )
    return model.Step(
        id="",
        name=render(spec.name, ctx, (*path, "name"), host) if spec.name else default_name,
        action=action,
        undo=undo,
        check=render(spec.check, ctx, (*path, "check"), host, "shell") if spec.check else None,
        idempotent=spec.idempotent or isinstance(action, model.ConfigAction | model.WaitAction),
        become=become if spec.become is None else spec.become,
    )


def _scalar(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def drain(
    spec: Any,
    path: PathKey,
    render: Renderer,
    ctx: dict[str, Any],
    host: str,
    *,
    inventory: Inventory,
) -> model.Drain:
    if spec.load_balancer is not None:
        lb = inventory.load_balancers[spec.load_balancer]
        return model.LoadBalancerDrain(
            load_balancer=spec.load_balancer,
            server=render(spec.server, ctx, (*path, "server"), host),
            backend=lb.backend,
            timeout=spec.timeout,
        )
    if spec.run is not None:
        items = [(spec.run, (*path, "run")), (spec.undo, (*path, "undo"))]
        if spec.wait_until:
            items.append((spec.wait_until, (*path, "wait_until")))
        run, undo, *wait = render.many(items, ctx, host, "shell")
        return model.RunDrain(
            run=run, undo=undo, wait_until=wait[0] if wait else None, timeout=spec.timeout
        )
    url, undo_url = render.many(
        [(spec.http, (*path, "http")), (spec.undo_http, (*path, "undo_http"))], ctx, host
    )
    return model.HttpDrain(url=url, undo_url=undo_url, method=spec.method, timeout=spec.timeout)


def check(
    spec: Any, path: PathKey, render: Renderer, ctx: dict[str, Any], host: str
) -> model.Check:
    if spec.http is not None:
        return model.HttpCheck(
            url=render(spec.http, ctx, (*path, "http"), host),
            expect_status=spec.expect_status,
            json_path=spec.json_path,
            expect=render(spec.expect, ctx, (*path, "expect"), host) if spec.expect else None,
            timeout=spec.timeout,
        )
    if spec.tcp is not None:
        text = render(spec.tcp, ctx, (*path, "tcp"), host)
        address, _, port = text.rpartition(":")
        if not address or not port.isdigit() or not 0 < int(port) < 65536:
            if text:  # an empty text means rendering already failed and was reported
                render.report(
                    (*path, "tcp"), f"expected ADDRESS:PORT, got '{text}' (for host {host})"
                )
            return model.TcpCheck(address=text, port=0, timeout=spec.timeout)
        return model.TcpCheck(address=address.strip("[]"), port=int(port), timeout=spec.timeout)
    return model.CommandCheck(
        run=render(spec.run, ctx, (*path, "run"), host, "shell"), timeout=spec.timeout
    )


def probe(
    spec: Any, path: PathKey, render: Renderer, ctx: dict[str, Any], host: str
) -> model.VersionProbe:
    return model.VersionProbe(
        http=render(spec.http, ctx, (*path, "http"), host) if spec.http else None,
        json_path=spec.json_path,
        run=render(spec.run, ctx, (*path, "run"), host, "shell") if spec.run else None,
        timeout=spec.timeout,
        releases=tuple((spec.releases or {}).items()),
    )


# --- the same, for many hosts at once -------------------------------------------
#
# What `drain` and `check` build, for hosts whose contexts differ only in
# `host` (hosts without vars, in one role and phase): each template rendered
# for all of them in one Jinja render (`Templates.render_for_hosts`). None
# whenever that cannot give what one by one would: the caller then builds
# host by host, which also reports any problem.


def drains_for(
    spec: Any,
    render: Renderer,
    ctx: dict[str, Any],
    hosts: Sequence[Namespace],
    *,
    inventory: Inventory,
) -> list[model.Drain] | None:
    templates = render.templates
    if spec.load_balancer is not None:
        rows = templates.render_for_hosts((spec.server,), ctx, hosts)
        if rows is None:
            return None
        lb = inventory.load_balancers[spec.load_balancer]
        return [
            model.LoadBalancerDrain(
                load_balancer=spec.load_balancer,
                server=server,
                backend=lb.backend,
                timeout=spec.timeout,
            )
            for (server,) in rows
        ]
    if spec.run is not None:
        sources = (spec.run, spec.undo, *([spec.wait_until] if spec.wait_until else []))
        rows = templates.render_for_hosts(sources, ctx, hosts, "shell")
        if rows is None:
            return None
        return [
            model.RunDrain(
                run=run, undo=undo, wait_until=wait[0] if wait else None, timeout=spec.timeout
            )
            for run, undo, *wait in rows
        ]
    rows = templates.render_for_hosts((spec.http, spec.undo_http), ctx, hosts)
    if rows is None:
        return None
    return [
        model.HttpDrain(url=url, undo_url=undo_url, method=spec.method, timeout=spec.timeout)
        for url, undo_url in rows
    ]


def checks_for(
    spec: Any, render: Renderer, ctx: dict[str, Any], hosts: Sequence[Namespace]
) -> list[model.Check] | None:
    templates = render.templates
    if spec.http is not None:
        sources = (spec.http, *([spec.expect] if spec.expect else []))
        rows = templates.render_for_hosts(sources, ctx, hosts)
        if rows is None:
            return None
        return [
            model.HttpCheck(
                url=url,
                expect_status=spec.expect_status,
                json_path=spec.json_path,
                expect=expect[0] if expect else None,
                timeout=spec.timeout,
            )
            for url, *expect in rows
        ]
    if spec.tcp is not None:
        rows = templates.render_for_hosts((spec.tcp,), ctx, hosts)
        if rows is None:
            return None
        found: list[model.Check] = []
        for (text,) in rows:
            address, _, port = text.rpartition(":")
            if not address or not port.isdigit() or not 0 < int(port) < 65536:
                return None  # built host by host, this one is reported
            found.append(
                model.TcpCheck(address=address.strip("[]"), port=int(port), timeout=spec.timeout)
            )
        return found
    rows = templates.render_for_hosts((spec.run,), ctx, hosts, "shell")
    if rows is None:
        return None
    return [model.CommandCheck(run=run, timeout=spec.timeout) for (run,) in rows]
