from __future__ import annotations

import click


@click.command("models")
def command() -> None:
    """List the DINOv2 backbones and where their weights would come from.

    \b
    Example:
      dinoret models
    """
    from dinoret.console import shown
    from dinoret.core.models import MODELS
    from dinoret.core.weights import hub_cache_path, official_url

    for name, cfg in MODELS.items():
        cached = hub_cache_path(name)
        where = f"cached: {cached}" if cached.is_file() else f"not cached; {official_url(name)}"
        click.echo(f"{name:22s} dim={cfg.embed_dim:<5d} depth={cfg.depth:<3d} registers={cfg.num_register_tokens}  {shown(where)}")
