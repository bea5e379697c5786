from __future__ import annotations

import click


@click.command("models")
def command() -> None:
    """List the DINOv2 backbones and where their weights would come from.

    \b
    Example:
      dinoret models
    """
    import dinoret
    from dinoret.console import shown

    for m in dinoret.models():
        where = f"cached: {m['cached']}" if m["cached"] else f"not cached; {m['url']}"
        click.echo(f"{m['name']:22s} dim={m['dim']:<5d} depth={m['depth']:<3d} registers={m['registers']}  {shown(where)}")
