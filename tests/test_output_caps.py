"""What the grader keeps from a kernel is bounded whatever the kernel sends (bngrade/output_caps.py).

Fast tests drive `OutputCaps` with messages made by jupyter_client's own
Session (as a kernel signs them). The slow ones grade a notebook per flood
class through the real sandbox (`python -m bngrade.flood_bench`, each in a
fresh process, so its peak RSS is that flood's) and check the two bounds:
the notebook grows at most 2 MiB, the grader stays under 1 GiB.
"""
import json
import os

import pytest

nbformat = pytest.importorskip("nbformat")
from jupyter_client.session import Session  # noqa: E402
from nbformat.v4 import new_code_cell, new_notebook  # noqa: E402

from bngrade.output_caps import DROPPED, OutputCaps, clean_output, json_size  # noqa: E402

MiB = 1 << 20


def _caps(**traits):
    caps = OutputCaps(new_notebook(cells=[new_code_cell("x")]), **traits)
    caps.reset_execution_trackers()
    caps.clear_before_next_output = False  # (async_execute_cell sets it per cell)
    session = Session(key=b"secret")
    caps._bound_session(session)
    return caps, session


def _wire(session, msg_type, content, buffers=None, parent=None):
    msg = session.msg(msg_type, content, parent=parent or {"msg_id": "cell-1"})
    frames = session.serialize(msg)
    return frames[frames.index(b"<IDS|MSG>") + 1:] + list(buffers or [])


def test_json_size_counts_escapes_lines_and_stops_at_the_limit():
    assert json_size("abc", 100) >= 5
    assert json_size("\n" * 1000, 10 ** 9) > 8 * 1000  # nbformat stores one indented line per newline
    assert json_size("\x00" * 100, 10 ** 9) >= 600  # \u0000 escapes
    assert json_size(["x"] * 10 ** 6, 1000) <= 1100  # stops counting past the limit


def test_clean_output_keeps_only_fields_of_the_right_type():
    assert clean_output("stream", {"name": "evil", "text": "hi"}) == {"output_type": "stream", "name": "stdout",
                                                                       "text": "hi"}
    assert clean_output("stream", {"name": "stdout", "text": ["not", "a", "str"] * 3}) is None
    out = clean_output("execute_result", {"data": {"text/plain": "1", 5: "x", "nomime": "y"}, "metadata": {},
                                          "execution_count": "c" * 100})
    assert out["data"] == {"text/plain": "1"} and out["execution_count"] is None
    assert clean_output("error", {"ename": "E", "evalue": 3, "traceback": []}) is None
    assert clean_output("comm_open", {}) is None


def test_small_messages_decode_as_usual():
    caps, session = _caps()
    msg = session.deserialize(_wire(session, "stream", {"name": "stdout", "text": "hello"}))
    assert msg["content"] == {"name": "stdout", "text": "hello"} and msg["parent_header"]["msg_id"] == "cell-1"


@pytest.mark.parametrize("content, buffers, why", [
    ({"data": {"text/plain": "x" * (9 * MiB)}, "metadata": {}}, None, "KiB"),
    ({"data": {"text/plain": "b"}, "metadata": {}}, [b"x" * (5 * MiB)] * 2, "KiB"),
    ({"data": {"text/plain": "j"}, "metadata": {"a": [[]] * 200_000}}, None, "JSON objects"),
])
def test_large_messages_and_json_bombs_are_counted_not_decoded(content, buffers, why):
    caps, session = _caps()
    frames = _wire(session, "display_data", content, buffers)
    msg = session.deserialize(frames)
    assert DROPPED in msg["content"] and why in msg["content"][DROPPED]
    assert msg["msg_type"] == "display_data" and msg["parent_header"] == {"msg_id": "cell-1"}
    assert caps._cell_sent == sum(len(f) for f in frames)  # every byte counted


def test_a_dropped_reply_still_ends_the_wait_for_it():
    caps, session = _caps()
    msg = session.deserialize(_wire(session, "execute_reply", {"status": "error", "evalue": "v" * (9 * MiB)}))
    assert msg["content"]["status"] == "error" and msg["content"]["ename"] == "DroppedReply"


def test_bad_signatures_and_malformed_headers_become_dropped_messages():
    caps, session = _caps()
    frames = _wire(session, "stream", {"name": "stdout", "text": "x"})
    msg = session.deserialize([b"0" * 64] + frames[1:])
    assert DROPPED in msg["content"]
    msg = session.deserialize([b"s" * 100_000] + frames[1:])
    assert DROPPED in msg["content"]


def test_display_updates_cost_their_size_times_the_outputs_they_rewrite():
    caps, session = _caps(max_output_bytes_per_cell=MiB, max_output_bytes_per_notebook=MiB)
    cell = caps.nb.cells[0]
    caps._current_cell = cell
    for _ in range(150):
        caps.process_message(session.deserialize(_wire(session, "display_data", {
            "data": {"text/plain": "x"}, "metadata": {}, "transient": {"display_id": "d"}})), cell, 0)
    for _ in range(5):
        caps.process_message(session.deserialize(_wire(session, "update_display_data", {
            "data": {"text/plain": "y" * 100_000}, "metadata": {}, "transient": {"display_id": "d"}})), cell, 0)
    size = len(json.dumps(cell.outputs))
    assert size < MiB, size  # 150 copies of 100 kB would be 15 MB
    assert any("display update" in o.get("text", "") for o in cell.outputs)


def test_comm_messages_keep_no_widget_state():
    caps, session = _caps()
    cell = caps.nb.cells[0]
    caps.process_message(session.deserialize(_wire(session, "comm_open", {
        "comm_id": "1", "target_name": "jupyter.widget",
        "data": {"state": {"_model_name": "OutputModel", "_model_module": "@jupyter-widgets/output",
                           "v": "w" * 100_000}, "buffer_paths": []}})), cell, 0)
    assert caps.widget_state == {} and caps.widget_buffers == {} and caps.comm_objects == {} and cell.outputs == []


# ---------------------------------------------------------------- through the sandbox, one process per flood
FLOODS = ("display_update_fanout", "display_metadata", "error_traceback", "comm_widget_state", "many_buffers",
          "json_bomb", "execution_count", "unknown_types_and_other_parents")


@pytest.mark.slow
@pytest.mark.skipif(not os.access("/usr/bin/bwrap", os.X_OK), reason="bubblewrap is not installed")
@pytest.mark.parametrize("flood", FLOODS)
def test_grader_memory_and_notebook_stay_bounded_under_flood(flood):
    from bngrade.flood_bench import measure
    r = measure(flood)
    assert r["grader_peak_rss_mib"] < 1024, r
    assert r["notebook_growth_mib"] <= 2, r
    if r["execution"]["kernel_died"]:  # the watchdog or the flood ceiling stopped it: said so, then NotRun
        assert r["last_cell"] == "NotRun", r
    else:
        assert r["last_cell"] == "after the flood", r
