"""File names of downloaded batch results: named by custom_id, never outside the target, never shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from cli.commands.batch import _checked_jsonl, item_name
from cli.waiting import image_paths


def _name(custom_id: str | None) -> str:
    return item_name({"id": "01a2-job", "custom_id": custom_id})


def test_custom_ids_become_relative_paths_inside_the_target() -> None:
    assert _name("cat-1") == "cat-1"
    assert _name("cats/1") == "cats/1"
    assert _name(None) == "01a2-job"
    for hostile in ("../../etc/passwd", "/abs/path", "a/../../b", "..", "./."):
        name = _name(hostile)
        assert not name.startswith("/") and ".." not in Path(name).parts, hostile
        assert (Path("/target") / name).resolve().is_relative_to(Path("/target"))


def test_ids_that_had_to_change_never_collide_with_others() -> None:
    ids = ["a b", "a_b", "a?b", "a/b", "a//b", "é", "e"]
    names = [_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert _name("a_b") == "a_b" and _name("a b").startswith("a_b-")


def test_several_images_get_numbered_names() -> None:
    assert image_paths(Path("out.png"), 1) == [Path("out.png")]
    assert image_paths(Path("d/out.webp"), 2) == [Path("d/out-1.webp"), Path("d/out-2.webp")]


def test_jsonl_is_checked_line_by_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"kind": "generate", "prompt": "a"}\n\n{"kind": "generate", "prompt": "b"}\n')
    assert _checked_jsonl(good).count(b"\n") == 2
    for text, line in (('{"a": 1}\n[1, 2]\n', 2), ("\n\n{oops\n", 3)):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(typer.Exit) as exc:
            _checked_jsonl(bad)
        assert exc.value.exit_code == 2
        assert f"bad.jsonl:{line}:" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(typer.Exit):
        _checked_jsonl(empty)
