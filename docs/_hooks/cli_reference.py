"""mkdocs hook: the CLI reference page is generated from the typer app at build time (it cannot rot).

``docs/cli.md`` holds the marker ``<!-- phaselens-cli -->``; this hook replaces it with one section per
command: its help text and a table of its arguments and options, read from the click command tree.
"""

from __future__ import annotations

import html

MARKER = "<!-- phaselens-cli -->"


def _default(p) -> str:
    d = p.default
    if d is None or callable(d) or getattr(p, "required", False):
        return "required" if getattr(p, "required", False) else ""
    if isinstance(d, bool):
        return "on" if d else "off"
    return f"`{d}`"


def _type(p, ctx) -> str:
    if getattr(p, "is_flag", False):
        return "flag"
    t = getattr(p, "type", None)  # click's parameters
    if t is not None:
        return getattr(t, "name", str(t))
    try:  # typer >= 0.20 parameters (typer vendors click)
        return str(p.display_type(ctx)).strip("<>")
    except Exception:  # noqa: BLE001 - the type column is a nicety
        return ""


def _row(p, ctx) -> str:
    if getattr(p, "param_type_name", "") == "argument":
        name = f"`{p.name.upper()}`"
    else:
        name = ", ".join(f"`{n}`" for n in [*p.opts, *getattr(p, "secondary_opts", [])])
    help_ = html.escape(" ".join((getattr(p, "help", None) or "").split())).replace("|", "\\|")
    return f"| {name} | {_type(p, ctx)} | {_default(p)} | {help_} |"


def cli_markdown() -> str:
    import typer

    from phaselens.cli import app

    root = typer.main.get_command(app)
    out = [f"Usage: `phaselens [GLOBAL OPTIONS] COMMAND [OPTIONS]`. {root.help or ''}", ""]
    glob = [p for p in root.params if p.name != "help" and not getattr(p, "hidden", False)]
    if glob:
        ctx = typer.Context(root, info_name="phaselens")
        out.extend(["Global options (before the command):", "", "| option | type | default | meaning |",
                    "|---|---|---|---|", *(_row(p, ctx) for p in glob), ""])

    def section(prefix: str, cmd) -> None:
        if getattr(cmd, "hidden", False):
            return
        subs = getattr(cmd, "commands", None)
        if subs:  # a group (``phaselens study ...``): one section per sub-command
            for sub in sorted(subs):
                section(f"{prefix} {sub}", subs[sub])
            return
        out.extend([f"## `phaselens {prefix}`", "", " ".join((cmd.help or "").split()), ""])
        params = [p for p in cmd.params if p.name != "help" and not getattr(p, "hidden", False)]
        ctx = typer.Context(cmd, info_name=prefix)
        if params:
            out.extend(["| argument / option | type | default | meaning |", "|---|---|---|---|", *(_row(p, ctx) for p in params), ""])

    for name in sorted(root.commands):
        section(name, root.commands[name])
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - mkdocs hook signature
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_markdown())
    return markdown
