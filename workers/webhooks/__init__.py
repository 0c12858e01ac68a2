"""Webhook delivery, the CPU worker's second job: everything between a due outbox row and a receiver's answer.

- `dispatcher`: the Celery tasks and beat tick, the dispatch loop and the delivery policy (retry, 410, give up);
- `delivery`: one HTTP POST to an address the SSRF guard (`egress.url_guard`) checked;
- `backoff`: when a failed delivery is tried again;
- `payload`: the body as the API shows the job or batch, result URLs presigned at send time, and the Standard
  Webhooks headers that sign it (`standardwebhooks`).

Every read and write of webhook rows goes through `storage.webhooks.store.WebhookStore` (progress events included);
this package runs no SQL. Importing it loads nothing: import the module you need.
"""
