"""`unipic webhooks ...`, `unipic deliveries ...` and `unipic upload FILE`: the key's webhook settings, a job's
webhook deliveries, and image uploads, over the SDK. Every answer is printed as the API's JSON (or, for
`upload`, the upload id alone unless `--json`).

`unipic webhooks listen` is a local receiver for trying webhooks offline, in the manner of payment platforms'
CLI listeners: it fetches the key's signing secret, listens on 127.0.0.1, verifies each delivery (Standard
Webhooks, `unipic_client.webhooks.verify`), prints one line per verified event (`--json`: the event as JSON)
and answers 200; an unverifiable delivery gets 400 and a line on stderr. `unipic up` admits loopback webhook
URLs (cli.commands.up), so `"webhook_url": "http://127.0.0.1:8787/"` works with no other setting.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import typer

from cli.client import ApiError, ApiKey, ApiUrl, dumps, echo_call, fail, open_client
from cli.output import json_mode

webhooks = typer.Typer(no_args_is_help=True, help="The API key's webhook secret and endpoints")
deliveries = typer.Typer(no_args_is_help=True, help="Webhook deliveries of a job, and replaying one")

Events = typer.Option(None, "--event", help="An event to send (repeat; default: every state change)")
ImageFile = typer.Argument(..., exists=True, dir_okay=False, help="PNG, JPEG or WebP")


@webhooks.command("secret")
def secret(api_url: str = ApiUrl, api_key: str | None = ApiKey) -> None:
    """The current signing secret (verify deliveries with it; `unipic_client.webhooks.verify`)."""
    echo_call(api_url, api_key, lambda c: c.sdk.webhook_secret())


LISTEN_PORT = 8787
MAX_DELIVERY_BYTES = 16 * 1024 * 1024


@webhooks.command("listen")
def listen(
    port: int = typer.Option(LISTEN_PORT, "--port", help="Port to listen on (127.0.0.1)"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on"),
    signing_secret: str | None = typer.Option(None, "--secret", help="whsec_... (default: the key's, from the API)"),
    max_events: int | None = typer.Option(None, "--max-events", min=1, help="Exit after this many verified events"),
    as_json: bool = typer.Option(False, "--json", help="Print each verified event as one JSON line"),
    api_url: str = ApiUrl, api_key: str | None = ApiKey,
) -> None:
    """Receive webhooks locally: verify each delivery and print it (use http://127.0.0.1:8787/ as webhook_url)."""
    from unipic_client.errors import WebhookVerificationError
    from unipic_client.webhooks import verify

    secrets = [signing_secret] if signing_secret else []
    if not secrets:
        with open_client(api_url, api_key) as client:
            try:
                secrets.append(client.sdk.webhook_secret()["secret"])
            except ApiError as exc:
                raise fail(exc) from None
    received = 0
    done = threading.Event()
    emit = json_mode(as_json)

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            nonlocal received
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_DELIVERY_BYTES:
                self._answer(413, {"error": "too large"})
                return
            body = self.rfile.read(length)
            try:
                event = verify(body, dict(self.headers.items()), secrets[-1])
            except WebhookVerificationError as exc:
                typer.secho(f"refused a delivery to {self.path}: {exc}", err=True, fg="red")
                self._answer(400, {"error": str(exc)})
                return
            self._answer(200, {"ok": True})
            typer.echo(json.dumps({"id": event.id, "type": event.type, "data": event.data}) if emit
                       else _event_line(event.type, event.id, event.data))
            received += 1
            if max_events is not None and received >= max_events:
                done.set()

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: one line per event

    try:
        server = ThreadingHTTPServer((host, port), Receiver)
    except OSError as exc:
        typer.secho(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True, fg="red")
        raise typer.Exit(2) from None
    typer.secho(f"listening on http://{host}:{server.server_port}/ : use it as webhook_url; each delivery is "
                "verified with the key's signing secret and printed (Ctrl-C stops)", err=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()


def _event_line(kind: str, event_id: str | None, data: dict[str, Any]) -> str:
    subject = f"batch {data.get('id')}" if kind.startswith("batch.") else f"job {data.get('id')}"
    detail = data.get("status") or ""
    if kind == "job.progress" and isinstance(data.get("progress"), dict):
        detail = f"step {data['progress'].get('step')}/{data['progress'].get('total')}"
    return " ".join(part for part in (f"{kind:<16}", subject, str(detail), f"({event_id})") if part)


@webhooks.command("rotate-secret")
def rotate_secret(api_url: str = ApiUrl, api_key: str | None = ApiKey) -> None:
    """A new secret; the previous one keeps signing for UNIPIC_WEBHOOK_SECRET_OVERLAP_SECONDS."""
    echo_call(api_url, api_key, lambda c: c.sdk.rotate_webhook_secret())


@webhooks.command("endpoints")
def endpoints(api_url: str = ApiUrl, api_key: str | None = ApiKey) -> None:
    """Every endpoint the key's jobs have sent to, with its state (disabled after 410 Gone)."""
    echo_call(api_url, api_key, lambda c: c.sdk.webhook_endpoints())


@webhooks.command("set-default")
def set_default(url: str = typer.Argument(..., help="The default webhook URL; 'none' clears it"),
                events: list[str] | None = Events, api_url: str = ApiUrl, api_key: str | None = ApiKey) -> None:
    """The URL every job of this key notifies unless it names its own."""
    target = None if url.lower() == "none" else url
    echo_call(api_url, api_key, lambda c: c.sdk.set_default_webhook(target, events or None))


@webhooks.command("enable")
def enable(endpoint_id: str, api_url: str = ApiUrl, api_key: str | None = ApiKey) -> None:
    """Enable an endpoint again (after it answered 410 Gone)."""
    echo_call(api_url, api_key, lambda c: c.sdk.enable_webhook_endpoint(endpoint_id))


@deliveries.command("list")
def list_deliveries(job_id: str, api_url: str = ApiUrl, api_key: str | None = ApiKey) -> None:
    """Every webhook event of a job (id or unique prefix) with its attempts."""
    echo_call(api_url, api_key, lambda c: c.sdk.deliveries(c.job_id(job_id)))


@deliveries.command("replay")
def replay(event_id: str, api_url: str = ApiUrl, api_key: str | None = ApiKey) -> None:
    """Send a webhook event again, with the same webhook-id."""
    echo_call(api_url, api_key, lambda c: c.sdk.replay_delivery(event_id))


def upload(image: Path = ImageFile, as_json: bool = typer.Option(False, "--json"),
           api_url: str = ApiUrl, api_key: str | None = ApiKey) -> None:
    """Upload an image once; print its id, to use as {"upload_id": ID} in many jobs."""
    with open_client(api_url, api_key) as client:
        try:
            upload_id = client.sdk.upload(image)
        except ApiError as exc:
            raise fail(exc) from None
    typer.echo(dumps({"upload_id": upload_id}) if json_mode(as_json) else upload_id)


def register(app: typer.Typer) -> None:
    app.add_typer(webhooks, name="webhooks")
    app.add_typer(deliveries, name="deliveries")
    app.command("upload")(upload)
