from __future__ import annotations

import json

import click

from dinoret.options import device_option, index_option, weights_option


@click.command("query")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@index_option
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1), help="Results per query.")
@click.option("--json", "as_json", is_flag=True, help="JSON output: [{query, results: [{rank, id, path, score}]}].")
@click.option("--rerank/--no-rerank", default=True, show_default=True,
              help="Re-score IVF-PQ candidates with exact cosine from the stored vectors.")
@weights_option
@device_option
def command(images, index_dir, k, as_json, rerank, weights, device) -> None:
    """The indexed images most similar to each query image (cosine similarity).

    Queries are embedded exactly as the collection was: same model, weights and
    preprocessing (the weights recorded in the index, or --weights with the same sha256).

    \b
    Example:
      dinoret query photo.jpg -k 5
      dinoret query a.jpg b.png --json > hits.json
    """
    import os

    from dinoret.retrieval.index import open_index

    reader = open_index(index_dir)
    if weights or device != "auto":
        reader.configure_embedder(device=device, weights=weights)
    results = reader.search_images(list(images), k=k, rerank=rerank)
    if as_json:
        out = [{"query": os.path.abspath(q), "results": [h.__dict__ for h in hits]} for q, hits in zip(images, results)]
        click.echo(json.dumps(out, indent=2))
        return
    for q, hits in zip(images, results):
        click.echo(f"query: {q}")
        click.echo(f"{'rank':>4}  {'score':>7}  path")
        for h in hits:
            click.echo(f"{h.rank:>4}  {h.score:7.4f}  {h.path}")
