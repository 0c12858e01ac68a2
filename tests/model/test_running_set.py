"""The stepping engine (issue 25): admit / step / drop, per-item state, and results independent of batch-mates.

Determinism is checked as a property: items join a running set at random steps, with random steps, guidance,
CFG on/off, schedules, seeds and image counts, and advance in random subsets (the rest pause); each one's
final tokens match the same item run alone within 1e-4 of their largest magnitude (fp32, CPU: the tiny model's
tokens reach hundreds, and a lone item's first step runs its few buffer rows through BLAS's small-matrix kernels,
which round differently: MKL on AVX-512 below about 16 rows, 4e-5 seen) and its images within one level of 255.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.inference import EditRequest, GenerateRequest
from tests.support.running_sets import run_alone, run_staggered

PROMPTS = ("a cat", "a dog on a long red sofa in the afternoon sun", "x", "tree at dawn")
TOKENS_TOL = 1e-4  # of the tokens' largest magnitude
LEVELS_TOL = 1
PROPERTY = settings(max_examples=20, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def max_level_diff(a, b) -> int:
    assert len(a) == len(b)
    return max(int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()) for x, y in zip(a, b, strict=True))


def tokens_close(a, b) -> bool:
    return float((a - b).abs().max()) <= TOKENS_TOL * max(1.0, float(b.abs().max()))


def assert_same_as_alone(engine, kind: str, requests: list, together: dict) -> None:
    for r in requests:
        alone = run_alone(engine, kind, r)
        got = together[r.id]
        assert got.tokens.shape == alone.tokens.shape
        assert tokens_close(got.tokens, alone.tokens), r
        assert max_level_diff(got.images, alone.images) <= LEVELS_TOL, r


item_fields = st.fixed_dictionaries({
    "seed": st.integers(0, 10**6),
    "steps": st.integers(1, 5),
    "guidance_scale": st.sampled_from([1.0, 2.0, 3.0]),
    "guidance_schedule": st.sampled_from(["constant", "linear"]),
    "temperature": st.sampled_from([1.0, 0.9]),
    "num_images": st.integers(1, 2),
    "arrive": st.integers(0, 4),
})


@PROPERTY
@given(items=st.lists(st.tuples(item_fields, st.sampled_from(PROMPTS), st.sampled_from([None, "blurry"])),
                      min_size=1, max_size=4),
       size=st.sampled_from([64, 128]), rng=st.randoms(use_true_random=False))
def test_generate_item_joining_at_any_step_matches_it_alone(engine, items, size, rng):
    # Given generate requests that differ in steps, guidance, CFG, schedule and arrival step
    requests, arrive = [], {}
    for i, (fields, prompt, negative) in enumerate(items):
        f = dict(fields)
        arrive[str(i)] = f.pop("arrive")
        requests.append(GenerateRequest(str(i), prompt, size=size, negative_prompt=negative, **f))
    # When they share a running set, advancing in random subsets
    together = run_staggered(engine, "generate", size, requests, arrive, rng)
    # Then each item's tokens and images are those of the item alone
    assert_same_as_alone(engine, "generate", requests, together)


@settings(max_examples=5, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(item_fields, min_size=2, max_size=3), rng=st.randoms(use_true_random=False))
def test_edit_item_joining_at_any_step_matches_it_alone(engine, photos, items, rng):
    requests, arrive = [], {}
    for i, fields in enumerate(items):
        f = dict(fields)
        arrive[str(i)] = f.pop("arrive")
        requests.append(EditRequest(str(i), photos[i], "make it " + "blue " * i, size=64, **f))
    together = run_staggered(engine, "edit", 64, requests, arrive, rng)
    assert_same_as_alone(engine, "edit", requests, together)


def test_wrapper_results_equal_a_set_run(engine):
    reqs = [GenerateRequest("a", "a cat", seed=3, size=64, steps=3),
            GenerateRequest("b", "a dog on a sofa", seed=4, size=64, steps=3, num_images=2)]
    results = engine.generate(reqs)
    for req, res in zip(reqs, results, strict=True):
        # tokens are bitwise those of the item alone; the VAE decodes the batch's images in one call
        assert max_level_diff(res.images, run_alone(engine, "generate", req).images) <= LEVELS_TOL


def test_more_steps_than_tokens_runs_to_the_end_and_matches_alone(engine, rng_seed=7):
    import random

    # Given 64 px images (16 tokens in the tiny model) asked with more steps than tokens: the schedule holds the
    # last token back, so many steps commit none (a soak of 32-step jobs failed them with model_error before)
    requests = [GenerateRequest("long", "a cat", seed=1, size=64, steps=24),
                GenerateRequest("longer", "a dog", seed=2, size=64, steps=40, guidance_scale=1.0),
                GenerateRequest("short", "a tree", seed=3, size=64, steps=3)]
    # When they run alone, through the whole-batch wrapper and staggered in one set
    whole = engine.generate(requests[:1]) + engine.generate(requests[1:2])
    together = run_staggered(engine, "generate", 64, requests, {"long": 0, "longer": 2, "short": 5},
                             random.Random(rng_seed))
    # Then every one finishes, its steps without a token change nothing, and it is the same as alone
    assert all(len(r.images) == 1 for r in whole)
    assert_same_as_alone(engine, "generate", requests, together)


def test_paused_items_keep_their_state_and_progress(engine):
    # Given two items in a set
    rs = engine.open_set("generate", 64)
    rs.admit([GenerateRequest("a", "a cat", seed=1, size=64, steps=3),
              GenerateRequest("b", "tree", seed=2, size=64, steps=2, guidance_scale=1.0)])
    assert rs.progress() == {"a": (0, 3), "b": (0, 2)} and rs.rows == 3
    # When only "a" advances twice
    assert rs.step({"a"}) == [] and rs.step({"a"}) == []
    # Then "b" has not moved, and finishing each takes exactly its remaining steps
    assert rs.progress() == {"a": (2, 3), "b": (0, 2)}
    assert [f.id for f in rs.step()] == ["a"]
    assert [f.id for f in rs.step()] == ["b"] and not rs.items
    # "a" at step 2 and "b" at step 0 shared one ragged step: packed, where padding "b" to "a"'s width would have
    # cost rows
    assert rs.stats.steps == 4 and rs.stats.ragged_steps == 1 and rs.stats.pad_rows_saved > 0


def test_an_item_left_undecoded_frees_its_rows_and_decodes_to_the_same_images(engine):
    # Given two items of different lengths in one set
    first, second = (GenerateRequest("first", "a cat", seed=11, size=64, steps=2),
                     GenerateRequest("second", "tree", seed=12, size=64, steps=3, num_images=2))
    rs = engine.open_set("generate", 64)
    rs.admit([first, second])
    rs.step(decode=False)
    # When the shorter one takes its last step without decoding
    (left,) = rs.step(decode=False)
    # Then it left the set with no images and its rows are free; the other goes on
    assert left.id == "first" and left.images is None and rs.ids == ["second"] and rs.rows == 4
    (last,) = rs.step(decode=False)
    assert not rs.items
    # And decoding each later (the set empty by then) gives exactly the images of the same set decoding in its steps
    same = engine.open_set("generate", 64)
    same.admit([first, second])
    decoded = {f.id: f for _ in range(3) for f in same.step()}
    for done in (rs.decode(left), rs.decode(last)):
        ref = decoded[done.id]
        assert done.images is not None and ref.images is not None and len(done.images) == len(ref.images)
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(done.images, ref.images, strict=True))


def test_drop_frees_rows_and_leaves_others_unchanged(engine):
    keep = GenerateRequest("keep", "a cat", seed=7, size=64, steps=3)
    rs = engine.open_set("generate", 64)
    rs.admit([keep, GenerateRequest("gone", "tree", seed=8, size=64, steps=3, num_images=2)])
    rs.step()
    # When one item is dropped mid-way and a new one with the same id joins later
    assert rs.drop({"gone", "never-there"}) == ["gone"]
    assert rs.ids == ["keep"] and rs.rows == 2
    late = GenerateRequest("gone", "x", seed=9, size=64, steps=2)
    rs.admit([late])
    done = {}
    while rs.items:
        done.update({f.id: f for f in rs.step()})
    # Then the kept item and the newcomer are each what they would be alone
    for r in (keep, late):
        assert tokens_close(done[r.id].tokens, run_alone(engine, "generate", r).tokens)


def test_a_failed_step_changes_nothing_so_the_set_can_shrink_and_retry(engine, monkeypatch):
    # Given two items that have taken a step
    keep = GenerateRequest("keep", "a cat", seed=11, size=64, steps=3, temperature=0.9)
    rs = engine.open_set("generate", 64)
    rs.admit([keep, GenerateRequest("big", "tree", seed=12, size=64, steps=3, num_images=2)])
    rs.step()
    # When the next step runs out of memory in the diffusion head (injected) after the items drew their noise
    real_head = engine.sampler.sample_head

    def oom_once(*args):
        monkeypatch.setattr(engine.sampler, "sample_head", real_head)
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(engine.sampler, "sample_head", oom_once)
    with pytest.raises(RuntimeError, match="out of memory"):
        rs.step()
    # Then no item moved, and after shrinking the set the kept item ends as it would alone
    assert rs.progress() == {"keep": (1, 3), "big": (1, 3)}
    rs.drop({"big"})
    done = {}
    while rs.items:
        done.update({f.id: f for f in rs.step()})
    assert tokens_close(done["keep"].tokens, run_alone(engine, "generate", keep).tokens)


def test_admit_checks_everything_before_admitting_anything(engine, photos):
    rs = engine.open_set("generate", 64)
    good = GenerateRequest("ok", "a cat", seed=1, size=64, steps=2)
    cases = [
        ([good, GenerateRequest("big", "a cat", seed=1, size=128)], "size 64"),
        ([good, EditRequest("e", photos[0], "blue", seed=1, size=64)], "generate request"),
        ([good, GenerateRequest("ok", "again", seed=2, size=64)], "already"),
        ([good, GenerateRequest("s", "a cat", seed=1, size=64, guidance_schedule="cosine")], "guidance_schedule"),
        ([good, GenerateRequest("n", "a cat", seed=1, size=64, steps=0)], "steps"),
    ]
    for requests, message in cases:
        with pytest.raises(ValueError, match=message):
            rs.admit(requests)
        assert rs.ids == []
    with pytest.raises(ValueError, match="kind"):
        engine.open_set("caption", 64)
    with pytest.raises(ValueError, match="multiple of 16"):
        engine.open_set("edit", 70)
    assert rs.step() == []  # an empty set steps to nothing
