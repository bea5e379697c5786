from __future__ import annotations

import click

from dinoret.console import shown
from dinoret.core.errors import UserError
from dinoret.options import device_option, index_option, weights_option


@click.command("serve")
@index_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but localhost exposes the index to the network: use --token.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--token", envvar="DINORET_TOKEN", default=None,
              help="Require this bearer token on every route (or set DINORET_TOKEN).")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256), help="Server worker threads.")
@click.option("--max-upload-mb", default=20.0, show_default=True, type=click.FloatRange(0.01),
              help="Largest upload accepted, in MiB.")
@click.option("--max-pixels", default=40_000_000, show_default=True, type=click.IntRange(1),
              help="Largest uploaded image accepted, in pixels.")
@device_option
@weights_option
@click.option("--debug", is_flag=True, help="Flask's development server with debug logging (never for real use).")
def command(index_dir: str, host: str, port: int, token: str | None, threads: int, max_upload_mb: float,
            max_pixels: int, device: str, weights: str | None, debug: bool) -> None:
    """Browse and search the index in a web browser; JSON API under /api.

    Runs a waitress WSGI server bound to 127.0.0.1 unless --host says otherwise.
    Files are served only by index id. Uploads for search are limited by
    --max-upload-mb and --max-pixels.

    \b
    Example:
      dinoret serve --index ./.dinoret --port 8080
      dinoret serve --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    import logging

    from dinoret.webui import create_app
    from dinoret.webui.security import trusted_hosts

    config = {
        "API_TOKEN": token or None,
        "MAX_CONTENT_LENGTH": int(max_upload_mb * 2**20),
        "MAX_UPLOAD_PIXELS": max_pixels,
        "TRUSTED_HOSTS": trusted_hosts(host),
        "DEVICE": device,
        "WEIGHTS": weights,
    }
    app = create_app(index_dir, config)
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        click.echo(f"warning: serving on {host} without --token: anyone who can reach it can search and read the index",
                   err=True)
    n = len(app.extensions["dinoret.index"])
    if debug:
        click.echo(f"serving {n:,} images (Flask development server, debug)")
        app.run(host=host, port=port, debug=True, use_reloader=False, use_debugger=False)
        return

    import waitress

    try:
        server = waitress.create_server(app, host=host, port=port, threads=threads, ident="dinoret")
    except (OSError, ValueError) as e:  # a port in use, a host name that does not resolve
        raise UserError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    host_shown = "localhost" if host in ("127.0.0.1", "::1") else host
    url = f"http://{host_shown}:{server.effective_port}/"
    click.echo(f"serving {n:,} images from {shown(app.config['INDEX_DIR'])} on {url}" + (f"?token={token}" if token else ""))
    try:
        server.run()
    finally:
        server.close()
