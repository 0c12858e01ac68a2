"""The embedded broker's housekeeping, on a broker database written by kombu itself."""

from __future__ import annotations

from pathlib import Path

from kombu import Connection

from cli.embedded_broker import purge_consumed, sqlite_path


def test_consumed_messages_are_purged_and_waiting_ones_kept(tmp_path: Path) -> None:
    # Given: a kombu sqla+sqlite broker with one consumed (acked) and one waiting message
    url = f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    with Connection(url) as conn:
        queue = conn.SimpleQueue("q")
        queue.put({"n": 1})
        queue.put({"n": 2})
        queue.get(timeout=5).ack()
        queue.close()
    # When: consumed messages older than nothing are purged
    deleted = purge_consumed(url, older_than_s=0)
    # Then: only the consumed one went; the waiting one is still delivered
    assert deleted == 1
    with Connection(url) as conn:
        queue = conn.SimpleQueue("q")
        message = queue.get(timeout=5)
        assert message.payload == {"n": 2}
        message.ack()
        queue.close()
    assert purge_consumed(url, older_than_s=3600) == 0  # the margin keeps recent rows


def test_other_brokers_and_missing_files_are_left_alone(tmp_path: Path) -> None:
    assert sqlite_path("redis://127.0.0.1:6379/0") is None
    assert purge_consumed("redis://127.0.0.1:6379/0", older_than_s=0) == 0
    assert purge_consumed(f"sqla+sqlite:///{tmp_path / 'absent' / 'b.sqlite'}", older_than_s=0) == 0
