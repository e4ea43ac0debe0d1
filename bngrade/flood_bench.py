"""The grader's memory and the autograded notebook's size under each class of kernel flood.

    python -m bngrade.flood_bench [--out bench-floods.json] [--only NAME ...]

Each flood runs as the second cell of a small notebook (a first cell prints,
a last cell prints 'after the flood') through `SandboxedExecute`, in a fresh
Python process, so that process's peak RSS (`ru_maxrss`) is the grader's
peak under that flood alone. The figures (peak RSS, growth of the saved
notebook, seconds, what the last cell shows) go to a JSON file. The bounds
the grader promises (`bngrade.output_caps`): the notebook grows at most
2 MiB, the grader stays under 1 GiB; `tests/test_output_caps.py` asserts
them for every flood here.
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20

# A cell that sends raw Jupyter messages from the kernel, as a hostile student can.
SEND = """
k = get_ipython().kernel
def send(msg_type, content, buffers=None, parent=True, socket=None, ident=None):
    k.session.send(socket or k.iopub_socket, msg_type, content, parent=k.get_parent() if parent else {},
                   buffers=buffers, ident=ident)
"""

FLOODS = {
    "stream": "import sys\nwhile True:\n    sys.stdout.write('flood ' * 2000 + '\\n')\n",
    "display_update_fanout": (
        "from IPython.display import display, update_display\n"
        "for i in range(150):\n    display({'text/plain': 'x'}, raw=True, display_id='d')\n"
        "big = 'y' * 1_500_000\n"
        "for i in range(40):\n    update_display({'text/plain': big}, raw=True, display_id='d')\n"),
    "display_metadata": (
        "from IPython.display import display\n"
        "for i in range(60):\n    display({'text/plain': 'm'}, raw=True, metadata={'a': 'z' * 5_000_000})\n"),
    "error_evalue": "raise ValueError('e' * 6_000_000)\n",
    "error_evalue_huge": "raise ValueError('e' * (40 << 20))\n",
    "error_traceback": SEND + (
        "for i in range(40):\n"
        "    send('error', {'ename': 'E' * 100_000, 'evalue': 'v' * 3_000_000, 'traceback': ['t' * 1000] * 3000})\n"),
    "comm_widget_state": SEND + (
        "for i in range(100):\n"
        "    send('comm_open', {'comm_id': str(i), 'target_name': 'jupyter.widget', 'data': {'state': {\n"
        "        '_model_name': 'OutputModel', '_model_module': '@jupyter-widgets/output', 'v': 'w' * 5_000_000},\n"
        "        'buffer_paths': [['b']]}}, buffers=[b'b' * 3_000_000])\n"
        "    send('comm_msg', {'comm_id': str(i), 'data': {'method': 'update', 'state': {'v': 'u' * 5_000_000}}})\n"),
    "many_buffers": SEND + (
        "b = b'x' * (30 << 20)\n"
        "for i in range(3):\n"
        "    send('display_data', {'data': {'text/plain': 'b'}, 'metadata': {}}, buffers=[b] * 40)\n"),
    "json_bomb": SEND + (
        "for i in range(20):\n"
        "    send('display_data', {'data': {'text/plain': 'j'}, 'metadata': {'a': [[]] * 2_000_000}})\n"),
    "many_tiny_outputs": SEND + (
        "for i in range(100_000):\n    send('display_data', {'data': {'text/plain': 'x'}, 'metadata': {}})\n"),
    "execution_count": SEND + (
        "for i in range(40):\n"
        "    send('execute_result', {'data': {'text/plain': '1'}, 'metadata': {},\n"
        "                            'execution_count': 'c' * 5_000_000})\n"
        "    send('execute_input', {'code': '', 'execution_count': ['c'] * 100_000})\n"),
    "unknown_types_and_other_parents": SEND + (
        "for i in range(300):\n"
        "    send('x' * 60_000, {'data': 'q' * 1_000_000})\n"
        "    send('stream', {'name': 'stdout', 'text': 'p' * 1_000_000}, parent=False)\n"),
    "stdin_queue": SEND + (
        "b = 'p' * (7 << 20)\n"
        "for i in range(400):\n"
        "    send('input_request', {'prompt': b, 'password': False}, socket=k.stdin_socket,\n"
        "         ident=k._parent_ident['shell'])\n"
        "import time; time.sleep(3)\n"),
}


def run_one(name, work):
    """Grade the flood notebook in this process; the figures as a dict."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from bngrade.sandbox import SandboxedExecute

    nb = new_notebook(cells=[new_code_cell("print('before the flood')"), new_code_cell(FLOODS[name]),
                             new_code_cell("print('after the flood')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    before = len(nbformat.writes(nb).encode())
    path = Path(work) / "autograded" / "flood" / "a"
    path.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    nb, resources = SandboxedExecute(timeout=120, retry_on_timeout=False).preprocess(
        nb, {"metadata": {"path": str(path)}})
    seconds = time.monotonic() - t0
    after = len(nbformat.writes(nb).encode())
    last = nb.cells[2].get("outputs", [])
    return dict(flood=name, grader_peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                notebook_growth_mib=round((after - before) / MiB, 3), seconds=round(seconds, 1),
                last_cell=(last[0].get("text") or last[0].get("ename", "")).strip()[:60] if last else "",
                execution={k: v for k, v in resources["bngrade_execution"].items() if k != "message"})


def measure(name):
    """run_one in a fresh Python process (so its peak RSS is this flood's alone)."""
    with tempfile.TemporaryDirectory(prefix="bngrade-flood-") as work:
        p = subprocess.run([sys.executable, "-m", "bngrade.flood_bench", "--one", name, "--work", work],
                           capture_output=True, text=True)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if p.returncode or not lines:
        raise RuntimeError(f"flood {name}: exit {p.returncode}\n{p.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bngrade.flood_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-floods.json")
    ap.add_argument("--only", nargs="*", choices=sorted(FLOODS))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.work)))
        return
    figures = []
    for name in args.only or FLOODS:
        r = measure(name)
        print(f"{name:32s} grader peak {r['grader_peak_rss_mib']:7.1f} MiB, notebook +{r['notebook_growth_mib']:.3f} "
              f"MiB, {r['seconds']:5.1f} s, last cell: {r['last_cell']!r}", flush=True)
        figures.append(r)
    Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
