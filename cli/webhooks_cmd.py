"""`unipic webhooks ...`, `unipic deliveries ...` and `unipic upload FILE`: the key's webhook settings, a job's
webhook deliveries, and image uploads, over the SDK. Every answer is printed as the API's JSON (or, for
`upload`, the upload id alone unless `--json`).
"""

from __future__ import annotations

from pathlib import Path

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
