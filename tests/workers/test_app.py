"""The Celery app factory: reliability settings, routing, and staying torch-free."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from storage.routing import MAINTENANCE_QUEUE, RUN_BATCH_TASK, SWEEP_TASK
from tests.support import REPO
from workers.app import make_celery, queue, visibility_timeout


def test_reliability_settings(settings: Any) -> None:
    conf = make_celery(settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result
    assert conf.broker_url == settings.broker_url
    # a message must stay invisible longer than the longest batch may run
    longest = settings.time_limit_floor_seconds + settings.time_limit_seconds_per_megapixel_step * (
        settings.worker_batch_pixel_budget / 1e6 * settings.max_steps)
    assert conf.broker_transport_options["visibility_timeout"] == visibility_timeout(settings) > longest


def test_the_maintenance_task_is_routed_to_its_queue(settings: Any) -> None:
    app = make_celery(settings)
    assert app.amqp.router.route({}, SWEEP_TASK)["queue"].name == MAINTENANCE_QUEUE


def test_a_queue_is_bound_to_its_own_exchange() -> None:
    q = queue("unipic.generate.s")
    assert (q.exchange.name, q.routing_key) == ("unipic.generate.s", "unipic.generate.s")


def test_the_gpu_entry_subscribes_to_what_its_settings_serve_and_registers_run_batch() -> None:
    code = (
        "import sys; import workers.gpu as g; "
        "print(sorted(q.name for q in g.app.conf.task_queues)); "
        f"print({RUN_BATCH_TASK!r} in g.app.tasks); print('torch' in sys.modules)"
    )
    env = {"UNIPIC_WORKER_KINDS": "understand", "UNIPIC_WORKER_MAX_PIXELS": str(512 * 512), "PATH": "/usr/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    # the model (and torch) load at worker start, not at import
    assert out == ["['unipic.understand.s']", "True", "False"]


def test_the_gpu_entry_builds_nothing_at_import_and_serves_the_settings_it_is_given() -> None:
    code = (
        "import os, workers.gpu as g; from storage.settings import load_settings; "
        "print(g._app is None and g._settings is None); "
        "app = g.configure(load_settings(worker_kinds=['edit'], worker_max_pixels=256 * 256)); "
        "print(sorted(q.name for q in app.conf.task_queues)); print(g.app is app, g.settings.worker_kinds); "
        "print(sorted(k for k in os.environ if k.startswith('UNIPIC_')))"
    )
    env = {"UNIPIC_WORKER_KINDS": "understand", "PATH": "/usr/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    # the options given win over the environment, and none of them was written into it
    assert out == ["True", "['unipic.edit.s']", "True ['edit']", "['UNIPIC_WORKER_KINDS']"]


def test_torch_free_modules_stay_torch_free() -> None:
    code = "import sys, workers.cpu, workers.sweeper, workers.app, workers.runner.leases, workers.runner.progress; " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
