"""`unipic generate`, `unipic edit` and `unipic ask`: submit one job over HTTP, wait with a progress bar, save.

Each command checks `-o` first (a directory takes `<job id>.<format>`; a suffix must name a format we write,
and agree with `--format`; the directory must exist, unless `--mkdir`, and take a file: a probe file is created
and removed), builds a `POST /v1/jobs` body (field names of api.schemas / design.md §1), submits
it through the SDK (automatic Idempotency-Key, retries honouring Retry-After), waits with `cli.waiting`, then
downloads the images or prints the answer. Job failures exit 1 with the job's error code; `--no-wait` prints
the job id and returns at once (`unipic jobs show ID` later). Ctrl-C while waiting prints the job id and how to
wait for or cancel it (exit 130; the job goes on), or cancels it with `--cancel-on-interrupt`. `ask` says on
stderr what it asked for (size, tokens), since a large image and many tokens take a while.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import typer

from cli.client import ApiClient, ApiError, ApiKey, ApiUrl, data_url, dumps, fail, open_client
from cli.output import json_mode
from cli.waiting import WaitTimeout, image_paths, save_images, wait_job
from storage.states import JobStatus

FORMATS = {".png": "png", ".webp": "webp", ".jpg": "jpeg", ".jpeg": "jpeg"}
SUFFIX_OF = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}

Size = typer.Option(None, "--size", help="Square side in pixels (one of the server's allowed sizes)")
Steps = typer.Option(None, "--steps", help="Sampling (MAR) steps")
Seed = typer.Option(None, "--seed", help="Random seed (the one used is reported either way)")
Guidance = typer.Option(None, "--guidance", help="Classifier-free guidance scale")
NumImages = typer.Option(1, "--num-images", "-n", min=1, max=4)
Format = typer.Option(None, "--format", help="png, webp or jpeg (default: from -o's suffix)")
Output = typer.Option(Path("out.png"), "--output", "-o",
                      help="Where to write the image (a directory: <job id>.<format> inside it)")
Priority = typer.Option(0, "--priority")
NoWait = typer.Option(False, "--no-wait", help="Print the job id and return without waiting")
AsJson = typer.Option(False, "--json", help="Print the final job as JSON")
ImageIn = typer.Argument(..., exists=True, dir_okay=False, help="The input image")
Timeout = typer.Option(None, "--timeout", help="Give up waiting after this many seconds (exit 1; the job goes on)")
MakeDirs = typer.Option(False, "--mkdir", help="Create -o's missing directories")
CancelOnInterrupt = typer.Option(False, "--cancel-on-interrupt", help="Ctrl-C cancels the job (default: it goes on)")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("edit")(edit)
    app.command("ask")(ask)


def generate(
    prompt: str = typer.Argument(..., help="What to draw"),
    output: Path = Output,
    size: int | None = Size, steps: int | None = Steps, seed: int | None = Seed,
    guidance: float | None = Guidance, num_images: int = NumImages,
    negative: str | None = typer.Option(None, "--negative", help="Negative prompt"),
    temperature: float | None = typer.Option(None, "--temperature"),
    fmt: str | None = Format, priority: int = Priority, no_wait: bool = NoWait, as_json: bool = AsJson,
    timeout: float | None = Timeout, mkdir: bool = MakeDirs, cancel_on_interrupt: bool = CancelOnInterrupt,
    api_url: str = ApiUrl, api_key: str | None = ApiKey,
) -> None:
    """Text to image: submit, wait with a progress bar, download to -o."""
    body = {"kind": "generate", "prompt": prompt, "negative_prompt": negative, "num_images": num_images,
            **_image_options(output, fmt, mkdir, size, steps, seed, guidance, temperature, priority)}
    _run_image_job(api_url, api_key, body, output, num_images, no_wait, as_json, timeout, cancel_on_interrupt)


def edit(
    image: Path = ImageIn,
    instruction: str = typer.Argument(..., help="What to change"),
    output: Path = Output,
    size: int | None = Size, steps: int | None = Steps, seed: int | None = Seed,
    guidance: float | None = Guidance, num_images: int = NumImages,
    temperature: float | None = typer.Option(None, "--temperature"),
    fmt: str | None = Format, priority: int = Priority, no_wait: bool = NoWait, as_json: bool = AsJson,
    timeout: float | None = Timeout, mkdir: bool = MakeDirs, cancel_on_interrupt: bool = CancelOnInterrupt,
    api_url: str = ApiUrl, api_key: str | None = ApiKey,
) -> None:
    """Edit an image following an instruction: submit, wait, download to -o."""
    options = _image_options(output, fmt, mkdir, size, steps, seed, guidance, temperature, priority)  # -o first
    body = {"kind": "edit", "image": data_url(image), "instruction": instruction, "num_images": num_images,
            **options}
    _run_image_job(api_url, api_key, body, output, num_images, no_wait, as_json, timeout, cancel_on_interrupt)


def ask(
    image: Path = ImageIn,
    question: str = typer.Argument(...),
    size: int | None = typer.Option(None, "--size", help="Side the image is resized to"),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens"),
    temperature: float | None = typer.Option(None, "--temperature"),
    seed: int | None = Seed, priority: int = Priority, no_wait: bool = NoWait, as_json: bool = AsJson,
    timeout: float | None = Timeout, cancel_on_interrupt: bool = CancelOnInterrupt,
    api_url: str = ApiUrl, api_key: str | None = ApiKey,
) -> None:
    """Image understanding: print the model's answer to a question about an image (a small --size and
    --max-new-tokens answer fastest)."""
    body = _compact({"kind": "understand", "image": data_url(image), "question": question, "size": size,
                     "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
                     "priority": priority or None})
    with open_client(api_url, api_key) as client:
        job = _submit_and_wait(client, body, no_wait, timeout, cancel_on_interrupt, _say_asking)
        if job is None:
            return
        if json_mode(as_json):
            typer.echo(dumps(job))
        else:
            typer.echo((job.get("result") or {}).get("text") or "")


# ---- shared ---------------------------------------------------------------------------------------------------
def _image_options(output: Path, fmt: str | None, mkdir: bool, size: int | None, steps: int | None,
                   seed: int | None, guidance: float | None, temperature: float | None,
                   priority: int) -> dict[str, Any]:
    """The sampling and output fields of an image job, after `-o` is checked (exit 2 before anything is read
    or sent); `-o` decides the output format."""
    fmt = checked_output(output, fmt, mkdir)
    return _compact({"size": size, "steps": steps, "seed": seed, "guidance_scale": guidance,
                     "temperature": temperature, "output_format": fmt, "priority": priority or None})


def _compact(body: dict[str, Any]) -> dict[str, Any]:
    """Leave unset options out so the server's defaults apply."""
    return {k: v for k, v in body.items() if v is not None}


def _say_submitted(job: dict[str, Any], cancel_on_interrupt: bool) -> None:
    then = "cancels it" if cancel_on_interrupt else "stops waiting; the job goes on"
    typer.secho(f"submitted: job {job['id']} {job['status']} (Ctrl-C {then})", err=True)


def _say_asking(job: dict[str, Any], cancel_on_interrupt: bool) -> None:
    params = job.get("params") or {}
    typer.secho(f"asking: job {job['id']}, image resized to {params.get('size', '?')} px, up to "
                f"{params.get('max_new_tokens', '?')} new tokens (--size and --max-new-tokens make it faster)",
                err=True)


def checked_output(output: Path, fmt: str | None, mkdir: bool = False) -> str:
    """The output format for `-o`, checked before anything is submitted (format, directory, writable: a probe
    file is created and removed); exits 2 naming the problem. Missing directories are an error unless `mkdir`
    (then they are made here)."""
    if fmt is not None and fmt not in SUFFIX_OF:
        _usage(f"--format {fmt!r}: use png, webp or jpeg")
    if output.is_dir():
        _probe(output, output)
        return fmt or "png"
    suffix = output.suffix.lower()
    if suffix not in FORMATS:
        _usage(f"-o {output}: cannot write {suffix or 'a file without a suffix'}; end it with .png, .webp or .jpg "
               "(or give a directory)")
    if fmt is not None and FORMATS[suffix] != fmt:
        _usage(f"-o {output} says {FORMATS[suffix]} but --format is {fmt}")
    parent = output.parent
    if not parent.exists():
        if not mkdir:
            _usage(f"-o {output}: directory {parent} does not exist (create it, or pass --mkdir)")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _usage(f"-o {output}: cannot create {parent}: {exc.strerror or exc}")
    if not parent.is_dir():
        _usage(f"-o {output}: {parent} is not a directory")
    if output.exists() and (output.is_dir() or not os.access(output, os.W_OK)):
        _usage(f"-o {output}: cannot overwrite it")
    _probe(output, parent)
    return FORMATS[suffix]


def _probe(output: Path, directory: Path) -> None:
    """Exit 2 unless a file can be created in `directory` (`os.access` says yes to root on /proc)."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".unipic-probe-"):
            pass
    except OSError as exc:
        _usage(f"-o {output}: cannot write into {directory}: {exc.strerror or exc}")


def _usage(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(2)


def _submit_and_wait(client: ApiClient, body: dict[str, Any], no_wait: bool, timeout: float | None,
                     cancel_on_interrupt: bool = False,
                     submitted: Any = None) -> dict[str, Any] | None:
    """Submit; unless no_wait, wait until terminal. Exits 1 on API errors and on jobs that did not succeed;
    Ctrl-C while waiting exits 130 saying how to follow the job (or cancels it)."""
    try:
        job = client.create_job(_compact(body))
        if no_wait:
            typer.echo(job["id"])
            return None
        try:  # the announcement is inside: a Ctrl-C just after its line is written still says how to follow the job
            (submitted or _say_submitted)(job, cancel_on_interrupt)
            job = wait_job(client, job, timeout)
        except KeyboardInterrupt:
            raise typer.Exit(_interrupted(client, job["id"], cancel_on_interrupt)) from None
    except ApiError as exc:
        raise fail(exc) from None
    except WaitTimeout as exc:
        typer.secho(f"gave up waiting: job {exc}; `unipic jobs wait {exc.last.id}` to keep waiting",
                    err=True, fg="red")
        raise typer.Exit(1) from None
    if job["status"] != JobStatus.SUCCEEDED:
        err = job.get("error") or {}
        typer.secho(f"job {job['id']} {job['status']}: {err.get('code', '')} {err.get('message', '')}".rstrip(),
                    err=True, fg="red")
        raise typer.Exit(1)
    return job


def _interrupted(client: ApiClient, job_id: str, cancel: bool) -> int:
    """Say what became of the job after Ctrl-C; the exit status (130)."""
    if cancel:
        try:
            job = client.cancel_job(job_id)
            typer.secho(f"\ninterrupted: job {job_id} {job['status']} (cancel requested)", err=True)
        except (ApiError, OSError) as exc:
            typer.secho(f"\ninterrupted: could not cancel job {job_id}: {exc}; `unipic jobs cancel {job_id}`",
                        err=True, fg="red")
        return 130
    typer.secho(f"\ninterrupted: job {job_id} goes on. Wait for it: `unipic jobs wait {job_id}`; "
                f"cancel it: `unipic jobs cancel {job_id}`", err=True)
    return 130


def _run_image_job(api_url: str, api_key: str | None, body: dict[str, Any], output: Path, count: int,
                   no_wait: bool, as_json: bool, timeout: float | None, cancel_on_interrupt: bool = False) -> None:
    with open_client(api_url, api_key) as client:
        job = _submit_and_wait(client, body, no_wait, timeout, cancel_on_interrupt)
        if job is None:
            return
        if output.is_dir():
            output = output / f"{job['id']}{SUFFIX_OF[job['params'].get('output_format') or 'png']}"
        try:
            written = save_images(client, job, image_paths(output, count))
        except ApiError as exc:
            raise fail(exc) from None
        except OSError as exc:  # the disk filled up, or the directory went away since the check
            typer.secho(f"error: job {job['id']} succeeded but writing {exc.filename or output} failed: "
                        f"{exc.strerror or exc}; `unipic jobs show {job['id']}` has its result URLs",
                        err=True, fg="red")
            raise typer.Exit(1) from None
        if json_mode(as_json):
            typer.echo(dumps(job))
        else:
            for path in written:
                typer.echo(str(path))
