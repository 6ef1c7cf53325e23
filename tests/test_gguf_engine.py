"""The GGUF generation engine's slots in the library: a ``generate(stream=True)`` iterator dropped
or closed unread cancels its sequence; the slots' K/V layouts (``kv_layout``); a full shared cache;
a slot's kept prompt (``prompt_cache``) reused by the next prompt that starts the same, with the
greedy text of a cold run. On the tiny GGUF Llama of ``conftest`` (f16 and Q8_0).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import edgekit
from edgekit.errors import InputError
from tests.test_serve import TIMEOUT
from tests.test_serve_openai import LONG, MESSAGES, PROMPT, wait_until

pytestmark = pytest.mark.usefixtures("probe_cache")


def test_a_stream_dropped_or_closed_unread_frees_its_slot(lm: Path) -> None:
    """``generate(..., stream=True)`` starts generating at once; dropping the iterator without ever
    reading it, or closing it, cancels the generation (a dropped generator never started would not)."""
    with edgekit.load(lm, threads=1, n_ctx=LONG) as m:
        engine = m._engine
        for how in ("drop", "close", "with"):
            before = engine.generated
            it = m.generate(PROMPT, max_tokens=LONG, temperature=0.0, stream=True)
            wait_until(lambda b=before: engine.generated > b, "the generation did not start")
            if how == "drop":
                del it
            elif how == "close":
                it.close()
                assert list(it) == []
            else:
                with it:
                    assert next(it)
            wait_until(lambda: engine.busy == 0, f"{how}: the generation did not end")
            assert engine.generated - before < LONG // 4, how
        want = m.generate(PROMPT, max_tokens=8, temperature=0.0)
        assert "".join(m.generate(PROMPT, max_tokens=8, temperature=0.0, stream=True)) == want


def test_slots_divide_the_context_unless_told_otherwise(lm: Path) -> None:
    """``kv_layout``: ``divided`` (the default) gives each of 4 slots n_ctx / 4 within the K/V cells
    of one n_ctx; ``per-slot`` 4 x the cells, n_ctx each; ``unified`` one n_ctx that all share.
    (Greedy text beside other sequences equals alone with the default: the tests above.)"""
    import llama_cpp

    got = {}
    for layout in ("divided", "per-slot", "unified"):
        with edgekit.load(lm, threads=1, n_ctx=1024, parallel=4, **({"kv_layout": layout} if layout != "divided"
                                                                      else {})) as m:
            got[layout] = (m.describe()["kv_layout"], m.describe()["n_ctx"], llama_cpp.llama_n_ctx(m._ctx))
            if layout == "divided":
                with pytest.raises(InputError) as info:
                    m.generate("the river " * 150, max_tokens=4)
                assert "n_ctx=" in str(info.value.fix) and "parallel=4" in str(info.value.fix)
    assert got == {"divided": ("divided", 256, 1024), "per-slot": ("per-slot", 1024, 4096),
                   "unified": ("unified", 1024, 1024)}


def test_a_full_shared_cache_ends_the_longest_sequence_not_all(lm: Path) -> None:
    """With ``kv_layout="unified"`` the 4 sequences share 256 cells; when they fill it the longest
    ends with ``length`` (its cells freed) and the others go on, instead of every one failing."""
    prompts = ["The council", "A small team", "Researchers found", "Farmers planted"]
    with edgekit.load(lm, threads=1, n_ctx=256, parallel=4, kv_layout="unified") as m:
        with m._engine.exclusive():  # admitted together
            requests = [m.start_generation(prompt=p, max_tokens=200, temperature=0.0, on_piece=lambda _: None)
                        for p in prompts]
        assert all(r.done.wait(TIMEOUT) for r in requests)
        assert [r.error for r in requests] == [None] * 4
        cut = [r for r in requests if r.finish_reason == "length" and r.completion_tokens < 200]
        assert cut and sum(r.prompt_tokens + r.completion_tokens for r in requests) > 256
        assert m._engine.busy == 0 and m.generate(prompts[0], max_tokens=4, temperature=0.0)


@pytest.mark.parametrize("precision", ["f16", "q8_0"])
def test_a_slot_keeps_its_prompt_and_the_next_turn_gives_a_cold_runs_text(lm: Path, lm_q8: Path,
                                                                         precision: str) -> None:
    """Turn two of a chat starts with turn one's prompt: the slot that held it decodes only the rest
    (the engine's ``reused`` count is the shared prefix), and every greedy reply equals the one a
    model without the cache gives."""
    path = lm if precision == "f16" else lm_q8
    turn1 = MESSAGES
    with edgekit.load(path, threads=1, parallel=2, prompt_cache=False) as cold:
        first = cold.chat(turn1, max_tokens=16, temperature=0.0)
        turn2 = [*turn1, {"role": "assistant", "content": first}, {"role": "user", "content": "And how wide is it?"}]
        second = cold.chat(turn2, max_tokens=16, temperature=0.0)
        longer = cold.generate(PROMPT + " that the river", max_tokens=16, temperature=0.0)
        assert cold._engine.reused == 0 and cold.describe()["prompt_cache"] is False
    with edgekit.load(path, threads=1, parallel=2) as m:
        assert m.describe()["prompt_cache"] is True  # the load-time check: a prompt in two calls is exact here
        t1, t2 = m._chat_prompt(turn1)[0], m._chat_prompt(turn2)[0]
        assert _shared(t1, t2) == len(t1)  # turn one's prompt starts turn two's
        assert m.chat(turn1, max_tokens=16, temperature=0.0) == first and m._engine.reused == 0
        assert m.chat(turn2, max_tokens=16, temperature=0.0) == second
        assert m._engine.reused == _shared(t1, t2)  # only turn two's new tokens were decoded
        short, long = m.tokenize(PROMPT), m.tokenize(PROMPT + " that the river")
        m.generate(PROMPT, max_tokens=4, temperature=0.0)  # a short match: to the empty slot, turn two's kept
        assert m._engine.reused == _shared(t1, t2)
        assert m.generate(PROMPT + " that the river", max_tokens=16, temperature=0.0) == longer
        assert m._engine.reused == _shared(t1, t2) + _shared(short, long) > _shared(t1, t2)
        assert m.chat(turn2, max_tokens=16, temperature=0.0) == second  # turn two's prompt was still kept
        assert m._engine.reused == _shared(t1, t2) + _shared(short, long) + len(t2) - 1


def _shared(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
