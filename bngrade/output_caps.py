"""Bounds on what the grader keeps from a kernel: `OutputCaps`, a mixin for nbclient's NotebookClient.

Everything a kernel sends is counted, whatever its type, before the grader
keeps any of it. The policy, in one place:

- **Every message counts.** The bytes of every message's frames (stream,
  display, `update_display_data`, `error`, comm, unknown types, replies, and
  messages addressed to another cell) count towards the cell's flood total.
  Past `flood_bytes_per_cell` the cell is interrupted; past
  `kill_bytes_per_cell` (a kernel that goes on sending after the interrupt)
  the kernel is stopped.
- **A message is read only if it is small.** A frame over `max_frame_bytes`
  (the content, all buffers together) or `max_header_bytes` (signature,
  header, parent header, metadata), or a JSON frame with more than
  `max_json_containers` objects/arrays (a few bytes of JSON can decode to
  hundreds of bytes of Python), is never decoded: the message is dropped
  and counted.
- **What is kept is capped** per cell (`max_output_bytes_per_cell`) and per
  notebook (`max_output_bytes_per_notebook`), measured as the bytes the
  output takes in the saved notebook (data, metadata, `ename`, `evalue`,
  traceback, stream text, line splitting and indentation). An
  `update_display_data` (or a display carrying an existing `display_id`)
  rewrites every output sharing that id, so it costs its size times the
  number of those outputs. Past a cap, output is dropped and the cell says so.
- **Outputs are plain data.** Only the output types of nbformat are kept,
  each rebuilt from fields of the right type; `execution_count` must be an
  int; a `display_id` must be a short string. The error that nbgrader copies
  from the execute reply is counted and cut like any output.
- **No widget state, no comms.** Comm messages are counted and dropped:
  nbclient would keep `widget_state`/`widget_buffers` outside every cap, and
  its Output widget redirects outputs into them.
- **A backstop on the grader's own memory.** Frames that zmq queues before
  anything here sees them (a message of many buffers, a channel nbclient
  never reads, such as stdin) grow the grader's resident memory in zmq's own
  thread. A watchdog thread reads the grader's RSS every 20 ms and stops the
  kernel once it has grown `max_grader_growth_mb` above what it was when the
  kernel started; the kernel's death frees the queues.
"""
import asyncio
import json
import os
import threading
import time

import zmq
from jupyter_core.utils import ensure_async
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from nbformat.v4 import new_output
from traitlets import Bool, Integer

MiB = 1 << 20
DROPPED = "bngrade_dropped"  # key of the content that replaces a message that was not decoded
OUTPUT_TYPES = ("stream", "display_data", "execute_result", "error")
IGNORED_TYPES = ("execute_input", "clear_output", "status", "update_display_data")
OUTPUT_OVERHEAD = 120  # the JSON around an output in a saved notebook (keys, output_type, indentation)


def json_size(value, limit, depth=4):
    """About the bytes `value` takes in a notebook saved by nbformat (indent 1), at nesting `depth`.

    Strings count as JSON-escaped, plus one indented line per newline (nbformat
    splits multi-line text into a list of lines). Stops counting past `limit`.
    """
    total, stack = 0, [(value, depth)]
    while stack and total <= limit:
        v, d = stack.pop()
        if isinstance(v, str):
            if len(v) > limit:
                return limit + 1
            total += len(json.dumps(v, ensure_ascii=False)) + v.count("\n") * (d + 8) + d + 2
        elif isinstance(v, dict):
            total += 2 * d + 4
            for k, x in v.items():
                total += len(str(k)) + 4 + d
                stack.append((x, d + 1))
        elif isinstance(v, (list, tuple)):
            total += 2 * d + 4
            stack.extend((x, d + 1) for x in v)
        else:
            total += 24 + d
    return total


def _is_text(v):
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))


def clean_output(msg_type, content):
    """The fields of the output an iopub message makes, each of the right type, or None.

    (A plain dict: nbformat's validation of every output is slow, and nbclient validates what it keeps.)
    """
    if msg_type == "stream":
        if not isinstance(content.get("text"), str):
            return None
        name = content.get("name") if content.get("name") in ("stdout", "stderr") else "stdout"
        return dict(output_type="stream", name=name, text=content["text"])
    if msg_type in ("display_data", "execute_result", "update_display_data"):
        data, metadata = content.get("data"), content.get("metadata", {})
        if not isinstance(data, dict) or not isinstance(metadata, dict):
            return None
        # `filenames` is nbconvert's own key (ExtractOutputPreprocessor): its templates make it an <img src>,
        # a request from the reader's browser to wherever the kernel said (the formgrader's /logout, say)
        metadata = {k: v for k, v in metadata.items() if k != "filenames"}
        clean = {}
        for mime, value in data.items():
            if not isinstance(mime, str) or len(mime) > 100 or "/" not in mime:
                continue
            if _is_text(value) or mime.endswith("json"):
                clean[mime] = value
        if msg_type == "execute_result":
            count = content.get("execution_count")
            return dict(output_type="execute_result", data=clean, metadata=metadata,
                        execution_count=count if type(count) is int else None)
        return dict(output_type="display_data", data=clean, metadata=metadata)
    if msg_type == "error":
        ename, evalue, tb = content.get("ename"), content.get("evalue"), content.get("traceback", [])
        if not (isinstance(ename, str) and isinstance(evalue, str) and _is_text(tb) and isinstance(tb, list)):
            return None
        return dict(output_type="error", ename=ename, evalue=evalue, traceback=tb)
    return None


class OutputCaps(NotebookClient):
    """nbclient's message handling with every byte counted and bounded (see the module docstring)."""

    max_output_bytes_per_cell = Integer(1 * MiB, help="output kept per cell; the rest dropped").tag(config=True)
    max_output_bytes_per_notebook = Integer(
        3 * MiB // 2, help="output kept in the whole notebook; the rest dropped").tag(config=True)
    flood_bytes_per_cell = Integer(16 * MiB, help="bytes sent during a cell past which it is interrupted").tag(
        config=True)
    kill_bytes_per_cell = Integer(256 * MiB, help="bytes sent during a cell past which the kernel is stopped").tag(
        config=True)
    max_frame_bytes = Integer(8 * MiB, help="a message whose content (or buffers) is larger is not read").tag(
        config=True)
    max_header_bytes = Integer(64 * 1024, help="a message whose header/metadata frame is larger is not read").tag(
        config=True)
    max_json_containers = Integer(100_000, help="a JSON frame with more objects and arrays is not read").tag(
        config=True)
    max_grader_growth_mb = Integer(
        384, help="the kernel is stopped when the grader's RSS grows this much above its start (0: no watchdog)").tag(
        config=True)
    store_widget_state = Bool(False).tag(config=True)

    _nb_kept = 0
    _memory_stop = None

    # ------------------------------------------------------------------ per run, per cell
    def reset_execution_trackers(self):
        super().reset_execution_trackers()
        self._nb_kept, self._memory_stop = 0, None
        self._cell_kept = self._cell_sent = 0
        self._cell_over = self._flood_noted = self._kill_noted = False
        self._current_cell = None

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        self._bound_session(kc.session)
        # zmq drops iopub messages past the high-water mark, the final 'idle' among them (the cell then waits
        # out iopub_timeout): queue them all instead; the memory watchdog bounds the queue.
        kc.iopub_channel.socket.setsockopt(zmq.RCVHWM, 0)
        self._start_watchdog()
        return kc

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        self._cell_kept = self._cell_sent = 0
        self._cell_over = self._flood_noted = self._kill_noted = False
        self._current_cell = cell if cell.get("cell_type") == "code" else None
        try:
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        except DeadKernelError:
            if self._memory_stop:
                cell.setdefault("outputs", []).append(self._note(self._memory_stop))
            raise

    def _note(self, text):
        return new_output("stream", name="stdout", text=f"\n[bngrade: {text}]\n")

    def _remaining(self):
        return max(0, min(self.max_output_bytes_per_cell - self._cell_kept,
                          self.max_output_bytes_per_notebook - self._nb_kept))

    def _admit(self, cost):
        """Count `cost` kept bytes if they fit both caps."""
        if self._cell_over or cost > self._remaining():
            return False
        self._cell_kept += cost
        self._nb_kept += cost
        return True

    def _drop(self, outs, what="output"):
        if not self._cell_over:
            self._cell_over = True
            cap = self.max_output_bytes_per_cell // 1024
            total = self.max_output_bytes_per_notebook // 1024
            outs.append(self._note(f"{what} past {cap} KiB in this cell (or {total} KiB in the notebook) "
                                   "was dropped"))

    # ------------------------------------------------------------------ the wire: count, refuse, decode
    def _bound_session(self, session):
        """Wrap `session.deserialize`: count every message's bytes, decode only small ones."""
        if getattr(session, "_bngrade_bounded", False):
            return
        original = session.deserialize

        def deserialize(msg_list, content=True, copy=True):
            frames = [f if isinstance(f, (bytes, bytearray, memoryview)) else f.bytes for f in msg_list]
            self._sent(sum(len(f) for f in frames))
            why = self._refuse(frames)
            if why is None:
                try:
                    msg = original(frames, content=content, copy=copy)
                except (ValueError, TypeError, KeyError, RecursionError) as e:
                    why = f"a malformed message ({type(e).__name__})"
                else:
                    if (isinstance(msg.get("parent_header"), dict) and isinstance(msg.get("msg_type"), str)
                            and len(msg["msg_type"]) <= 64 and isinstance(msg.get("content"), dict)):
                        return msg
                    why = "a malformed message"
            return self._dropped_message(frames, why)

        session.deserialize = deserialize
        session._bngrade_bounded = True

    def _refuse(self, frames):
        """Why this message is not decoded, or None."""
        if len(frames) < 5:
            return None  # jupyter_client raises its own error
        if len(frames[0]) > 256 or any(len(f) > self.max_header_bytes for f in frames[1:4]):
            return "a message with an oversized header"
        size = len(frames[4]) + sum(len(f) for f in frames[5:])
        if size > self.max_frame_bytes:
            return f"a message of {size // 1024} KiB"
        for f in frames[1:5]:
            if f.count(b"{") + f.count(b"[") > self.max_json_containers:
                return "a message of too many JSON objects"
        return None

    def _dropped_message(self, frames, why):
        """A stand-in for a message that was not decoded: its type and parent if they can be read cheaply."""
        header, parent = {}, {}
        try:
            if len(frames) >= 3 and all(len(f) <= self.max_header_bytes for f in frames[1:3]):
                header, parent = json.loads(bytes(frames[1])), json.loads(bytes(frames[2]))
        except (ValueError, RecursionError):
            pass
        if not isinstance(header, dict) or not isinstance(parent, dict):
            header, parent = {}, {}
        msg_type = header.get("msg_type") if isinstance(header.get("msg_type"), str) else DROPPED
        msg_id = header.get("msg_id") if isinstance(header.get("msg_id"), str) else ""
        parent = {"msg_id": parent["msg_id"]} if isinstance(parent.get("msg_id"), str) else {}
        content = {DROPPED: why}
        if msg_type.endswith("_reply"):  # a reply must still end the wait for it
            content.update(status="error", ename="DroppedReply", evalue=f"the kernel sent {why}", traceback=[])
        return {"header": {"msg_type": msg_type[:64], "msg_id": msg_id[:100]}, "msg_id": msg_id[:100],
                "msg_type": msg_type[:64], "parent_header": parent, "metadata": {},
                "content": content, "buffers": []}

    def _sent(self, nbytes):
        """Count bytes the kernel sent during this cell; interrupt, then stop, a flood."""
        self._cell_sent += nbytes
        if self._cell_sent > self.flood_bytes_per_cell and not self._flood_noted:
            self._flood_noted = True
            if self._current_cell is not None:
                self._current_cell.setdefault("outputs", []).append(self._note(
                    f"more than {self.flood_bytes_per_cell // MiB} MiB of output: the cell was interrupted"))
            if self.km is not None:
                asyncio.ensure_future(ensure_async(self.km.interrupt_kernel()))
        if self._cell_sent > self.kill_bytes_per_cell and not self._kill_noted:
            self._kill_noted = True
            self._stop_kernel(f"the kernel went on sending after the interrupt (more than "
                              f"{self.kill_bytes_per_cell // MiB} MiB in one cell): it was stopped")

    def _stop_kernel(self, why):
        self._memory_stop = why
        self.log.warning("bngrade: %s", why)
        proc = getattr(getattr(self.km, "provisioner", None), "process", None)
        try:
            if proc is not None and proc.returncode is None:
                proc.kill()
        except OSError:
            pass

    # ------------------------------------------------------------------ the grader's own memory
    def _start_watchdog(self):
        proc = getattr(getattr(self.km, "provisioner", None), "process", None)
        if proc is None or self.max_grader_growth_mb <= 0:
            return
        limit = _rss() + self.max_grader_growth_mb * MiB
        self._watched = proc

        def watch():
            while proc.returncode is None and self._watched is proc and self.km is not None:
                rss = _rss()
                if rss > limit:
                    self._stop_kernel(f"the kernel's messages took the grader's memory to {rss // MiB} MiB: "
                                      "the kernel was stopped")
                    return
                time.sleep(0.02)

        threading.Thread(target=watch, name="bngrade-memory-watchdog", daemon=True).start()

    # ------------------------------------------------------------------ nbclient's handlers
    def process_message(self, msg, cell, cell_index):
        content, msg_type = msg.get("content"), msg.get("msg_type")
        outs = cell.outputs
        if not isinstance(content, dict) or not isinstance(msg_type, str):
            return None
        if DROPPED in content:
            if msg_type != "status":
                self._drop(outs, f"{content[DROPPED]} (not read) and the output")
            return None
        if msg_type.startswith("comm"):
            return None  # counted on the wire; no widget state is kept
        if msg_type == "status" and not isinstance(content.get("execution_state"), str):
            return None
        if msg_type not in OUTPUT_TYPES + IGNORED_TYPES or (self._cell_over and msg_type in OUTPUT_TYPES):
            return None  # an unknown type, or output past the cap: counted on the wire, nothing kept
        clean = dict(content)
        if "execution_count" in clean and type(clean["execution_count"]) is not int:
            clean.pop("execution_count")
        transient = clean.get("transient")
        if transient is not None:
            display_id = transient.get("display_id") if isinstance(transient, dict) else None
            clean["transient"] = ({"display_id": display_id}
                                  if isinstance(display_id, str) and 0 < len(display_id) <= 200 else {})
        if msg_type in OUTPUT_TYPES + ("update_display_data",):
            out = clean_output(msg_type, clean)
            if out is None:
                self._drop(outs, "malformed output")
                return None
            fields = {k: v for k, v in out.items() if k != "output_type"}
            clean.update(fields)
            if msg_type == "update_display_data":
                clean.pop("execution_count", None)
        msg = {**msg, "content": clean}
        return super().process_message(msg, cell, cell_index)

    def _update_display_id(self, display_id, msg):
        mapped = self._display_id_map.get(display_id)
        copies = sum(len(v) for v in mapped.values()) if mapped else 0
        if not copies:
            return None
        left = self._remaining()
        content = msg["content"]
        one = json_size([content.get("data"), content.get("metadata")], left // copies + 1)
        if not self._admit(one * copies):
            outs = self._current_cell.setdefault("outputs", []) if self._current_cell is not None else []
            self._drop(outs, f"a display update (copied into {copies} outputs)")
            return None
        return super()._update_display_id(display_id, msg)

    def output(self, outs, msg, display_id, cell_index):
        if self._cell_over:
            return None
        content = msg["content"]
        left = self._remaining()
        size = OUTPUT_OVERHEAD + json_size(content, left) + (len(display_id) if display_id else 0)
        if self._admit(size):
            return super().output(outs, msg, display_id, cell_index)
        if msg["msg_type"] == "stream" and left > OUTPUT_OVERHEAD + 1024:  # keep the first part of a long print
            text = content["text"][:max(0, (left - OUTPUT_OVERHEAD) // 2)]
            text = text[:max(0, len(text) - text.count("\n") * 12)]
            if self._admit(OUTPUT_OVERHEAD + json_size(text, left)):
                super().output(outs, {**msg, "content": {**content, "text": text}}, None, cell_index)
        self._drop(outs)
        return None

    def handle_comm_msg(self, outs, msg, cell_index):
        return None  # never reached (process_message drops comms); kept so no subclass path stores widget state

    async def _check_raise_for_error(self, cell, cell_index, exec_reply):
        content = exec_reply.get("content") if isinstance(exec_reply, dict) else None
        if exec_reply is not None and not (isinstance(content, dict) and isinstance(content.get("status"), str)):
            exec_reply = {"content": {"status": "error", "ename": "MalformedReply", "evalue": "", "traceback": []}}
        return await super()._check_raise_for_error(cell, cell_index, exec_reply)

    def on_cell_executed(self, **kwargs):
        """nbgrader copies the reply's error into the cell when no output matches it: count and cut it too."""
        reply = kwargs.get("execute_reply") or {}
        content = reply.get("content") if isinstance(reply, dict) else None
        if not isinstance(content, dict):
            content = {"status": "error", "ename": "MalformedReply", "evalue": "", "traceback": []}
        if content.get("status") == "error":
            err = clean_output("error", content)
            if err is None:
                err = dict(output_type="error", ename="MalformedReply", evalue="the kernel's reply was malformed",
                           traceback=[])
            cell = kwargs.get("cell")
            recorded = cell is not None and any(o.get("output_type") == "error" and o.get("ename") == err["ename"]
                                                for o in cell.get("outputs", []))
            if not recorded and not self._admit(OUTPUT_OVERHEAD + json_size(err, self._remaining())):
                err = dict(err, ename=err["ename"][:100], evalue="(too long to keep)", traceback=[])
            content = {"status": "error", "ename": err["ename"], "evalue": err["evalue"],
                       "traceback": err["traceback"]}
        kwargs["execute_reply"] = {**reply, "content": content} if isinstance(reply, dict) else {"content": content}
        parent = getattr(super(), "on_cell_executed", None)  # nbgrader's Execute copies the error; nbclient: a hook
        return parent(**kwargs) if callable(parent) else None


def _rss():
    """This process's resident memory in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
