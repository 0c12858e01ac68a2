"""Token-level continuous batching for understanding (issue 25, item 2): a decode set admits, pauses, drops and
retires items between two decode steps, and an item's text does not depend on when it joined or who shared its
steps. Checked as a property: items with random questions (prompt lengths), token limits, temperatures and seeds
join at random steps and advance in random subsets; each one's token ids equal the same item's alone."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.inference import UnderstandRequest
from tests.support.running_sets import run_alone, run_staggered

QUESTIONS = ("what is this?", "describe the colours and shapes of everything in this picture in detail", "", "hm")


ask_fields = st.fixed_dictionaries({
    "seed": st.integers(0, 10**6),
    "max_new_tokens": st.integers(1, 12),
    "temperature": st.sampled_from([0.0, 0.0, 0.8, 1.5]),
    "question": st.sampled_from(QUESTIONS),
    "arrive": st.integers(0, 6),
})


@settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(ask_fields, min_size=1, max_size=4), rng=st.randoms(use_true_random=False))
def test_an_item_joining_at_any_token_reads_as_it_alone(engine, photos, items, rng):
    # Given understand requests that differ in question length, token limit, temperature and arrival step
    requests, arrive = [], {}
    for i, fields in enumerate(items):
        f = dict(fields)
        arrive[str(i)] = f.pop("arrive")
        requests.append(UnderstandRequest(str(i), photos[i % len(photos)], size=64, **f))
    # When they share one decode set, advancing in random subsets
    together = run_staggered(engine, "understand", 64, requests, arrive, rng)
    # Then each item generated the tokens it generates alone, within its limit
    for r in requests:
        alone = run_alone(engine, "understand", r)
        assert together[r.id].token_ids == alone.token_ids and together[r.id].text == alone.text, r
        assert len(alone.token_ids) <= r.max_new_tokens


def test_wrapper_equals_a_set_run_and_reports_each_token(engine, photos):
    asks = [UnderstandRequest("a", photos[0], "what?", seed=1, size=64, max_new_tokens=6),
            UnderstandRequest("b", photos[1], "and this one, in many more words?", seed=2, size=64, max_new_tokens=3)]
    calls = []
    texts = engine.understand(asks, progress=lambda ids, step, total: calls.append((ids, step, total)))
    assert [t.text for t in texts] == [run_alone(engine, "understand", r).text for r in asks]
    assert calls[0] == (["a", "b"], 1, 6) and calls[-1][0] == [] and [c[1] for c in calls] == list(range(1, len(calls) + 1))


def test_rows_are_reused_and_the_slab_grows_for_a_longer_newcomer(engine, photos):
    # Given a set of two short items, one of which leaves (dropped) after a token
    short = [UnderstandRequest(str(i), photos[i], "q", seed=i, size=64, max_new_tokens=3) for i in range(2)]
    ds = engine.open_set("understand", 64)
    ds.admit(short)
    ds.step()
    assert ds.drop({"0", "nope"}) == ["0"]
    assert ds.progress() == {"1": (1, 3)}
    # When a newcomer with a longer question and more tokens joins
    long = UnderstandRequest("2", photos[2], "tell me " * 12, seed=5, size=64, max_new_tokens=20)
    ds.admit([long])
    # Then it took the freed row (the slab grew in slots, not rows), and both end as they would alone
    assert sorted(it.row for it in ds.items) == [0, 1]
    done = {}
    while ds.items:
        done.update({f.id: f for f in ds.step()})
    assert done["1"].token_ids == run_alone(engine, "understand", short[1]).token_ids
    assert done["2"].token_ids == run_alone(engine, "understand", long).token_ids
    assert ds._slab is None  # an empty set holds no memory


def test_paused_items_keep_their_place(engine, photos):
    asks = [UnderstandRequest(str(i), photos[i], "what is it", seed=i, size=64, max_new_tokens=5, temperature=0.9)
            for i in range(2)]
    ds = engine.open_set("understand", 64)
    ds.admit(asks)
    for _ in range(3):
        ds.step({"0"})
    assert ds.progress()["1"] == (0, 5)
    done = {}
    while ds.items:
        done.update({f.id: f for f in ds.step()})
    assert all(done[r.id].token_ids == run_alone(engine, "understand", r).token_ids for r in asks)


def test_a_failed_step_changes_nothing(engine, photos, monkeypatch):
    # Given two sampling items that have chosen a token
    asks = [UnderstandRequest(str(i), photos[i], "what", seed=7 + i, size=64, max_new_tokens=6, temperature=1.2)
            for i in range(2)]
    ds = engine.open_set("understand", 64)
    ds.admit(asks)
    ds.step()
    before = ds.progress()
    # When the next step's LLM pass runs out of memory (injected) after both drew their tokens
    real = engine.runner.extend_rows

    def oom_once(*args):
        monkeypatch.setattr(engine.runner, "extend_rows", real)
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(engine.runner, "extend_rows", oom_once)
    with pytest.raises(RuntimeError, match="out of memory"):
        ds.step()
    # Then no item moved, and after shrinking the set the kept one reads as it does alone
    assert ds.progress() == before
    ds.drop({"1"})
    done = []
    while ds.items:
        done += ds.step()
    assert done[0].token_ids == run_alone(engine, "understand", asks[0]).token_ids


def test_admit_checks_everything_before_admitting_anything(engine, photos):
    ds = engine.open_set("understand", 64)
    good = UnderstandRequest("ok", photos[0], "q", seed=1, size=64)
    for bad, message in [(UnderstandRequest("big", photos[0], "q", 1, size=128), "size 64"),
                         (UnderstandRequest("z", photos[0], "q", 1, size=64, max_new_tokens=0), "max_new_tokens"),
                         (UnderstandRequest("t", photos[0], "q", 1, size=64, temperature=-1), "temperature"),
                         (UnderstandRequest("ok", photos[1], "q", 2, size=64), "already")]:
        with pytest.raises(ValueError, match=message):
            ds.admit([good, bad])
        assert ds.ids == []
    with pytest.raises(ValueError, match="multiple of 16"):
        engine.open_set("understand", 70)
    assert ds.step() == [] and torch.is_inference_mode_enabled() is False


def test_answers_equal_transformers_greedy_generate_for_items_joining_at_different_tokens(engine, photos):
    # The reference (spec §7.1): transformers' `generate` from the item's own inputs_embeds, greedy, the checkpoint's
    # repetition penalty over generated tokens, stopping at the stop ids (it keeps the stop token; we do not)
    from model.images import understand_pixels
    from model.prompts import DEFAULT_QUESTION, image_input

    asks = [UnderstandRequest(str(i), photos[i], q, seed=i, size=64, max_new_tokens=12)
            for i, q in enumerate(QUESTIONS)]
    ds = engine.open_set("understand", 64)
    done = {}
    for t in range(40):  # item i joins at token 3·i
        ds.admit([r for i, r in enumerate(asks) if 3 * i == t])
        done.update({f.id: f.token_ids for f in ds.step()})
    assert len(done) == len(asks)
    c, stops = engine.conditioner, list(engine.tokenizer.stop_ids)
    weight, slots = c.model.proj_in[0].weight, ds.grid[0] * ds.grid[1] + c.model.cfg.mar.buffer_size
    for r in asks:
        _, z = c.image_embeddings(understand_pixels([r.image], 64, weight.dtype, weight.device), ds.grid)
        embeds, _ = c.embed_rows([engine.tokenizer.encode(image_input(r.question or DEFAULT_QUESTION), slots)], [z[0]])
        with torch.no_grad():
            ref = engine.runner.llm.generate(
                inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                max_new_tokens=r.max_new_tokens, do_sample=False, repetition_penalty=engine.loaded.repetition_penalty,
                eos_token_id=stops, pad_token_id=engine.tokenizer.pad_id)[0].tolist()
        assert done[r.id] == [t for t in ref if t not in stops], r.id


def test_an_admission_that_runs_out_of_memory_admits_nothing(engine, photos, monkeypatch):
    # Given a set with one live item
    ds = engine.open_set("understand", 64)
    ds.admit([UnderstandRequest("live", photos[0], "q", seed=1, size=64, max_new_tokens=4)])
    # When two more are admitted together and the second one's prefill runs out of memory (injected)
    real, calls = engine.runner.prefix, []

    def oom_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.runner, "prefix", oom_on_second)
    with pytest.raises(RuntimeError, match="out of memory"):
        ds.admit([UnderstandRequest(str(i), photos[i], "q", seed=i, size=64, max_new_tokens=4) for i in (1, 2)])
    # Then neither joined, and the live item ends as it would alone
    monkeypatch.setattr(engine.runner, "prefix", real)
    assert ds.ids == ["live"] and sorted(it.row for it in ds.items) == [0]
    done = []
    while ds.items:
        done += ds.step()
    assert done[0].token_ids == run_alone(engine, "understand", UnderstandRequest("live", photos[0], "q", seed=1, size=64,
                                                                    max_new_tokens=4)).token_ids
