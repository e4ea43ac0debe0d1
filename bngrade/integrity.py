"""Static integrity checks on a submission, run by the grader outside the kernel.

Nothing here executes student code: it parses the notebook's code cells (with
IPython's own input transformations, so `!cmd` and `%magic` lines parse as the
calls they become) and reads the syntax tree. Words in strings, comments and
docstrings are never looked at.

Nothing here changes a score (issue 14): what a static analysis says about
code is evidence for a person. Three parts:

* `suspicious_code(source)` / `suspicious_notebook(nb)`: code that reaches for
  the machinery around the tests (stack frames, `sys.modules`, `ctypes`,
  `importlib`, other processes, IPython's hooks, monkeypatching an imported
  module, writing files, `eval`/`exec`...). These are *reported* to the
  instructor (see `bngrade.integrity_preprocessors.ReportSuspiciousCode`) and
  never cost marks: the sandbox and the verdict outside the kernel are the
  defence; the report says where a person should look.
* `closed_form_problem(nb)`: does batchnorm_backward_alt reach the staged
  batchnorm_backward? A call graph over the notebook's top-level definitions
  (rule below). It used to zero the closed-form tests; it missed routes and
  punished honest structure, so it is now one line of the code review.
* `closed_form_evidence(nb)`: the ranked code review of the backwards for the
  person grading the derivation: the call graph's finding, routes it does not
  follow, signs of a numerical derivative of the forward (see that section).
* `analyse(nb)` / `analyse_within_budget(nb)`: all of the above for one
  notebook, in a child process bounded in input size, time and memory.

The call-graph rule (decided here, stated once):

1. The notebook's code cells, test cells excepted, are read in order, as the
   kernel runs them. Each top-level binding (`def`, `class`, `lambda`, an
   assignment, `globals()["name"] = ...` with a literal name) becomes a node.
   A function body's free names resolve to the *last* binding of that name
   (the tests run after every cell); defaults, decorators and the right-hand
   side of an assignment resolve at the moment they run (`f = g` is g as it
   was then). `getattr(x, "name")` and `globals()["name"]` with a literal
   name count as a use of `name`.
2. The closed form has a problem when, following these uses from it, it
   reaches (a) the staged backward itself: a direct call, an alias, a default
   argument, a lambda, a partial, a callable class; (b) a structural copy of
   the staged backward: the same syntax tree once the function's name, its
   docstring and its parameters and local variables are renamed away; or
   (c) a helper shared with the staged backward that does the backward's
   work.
3. A helper is shared when both reach it, the staged backward without going
   through the closed form (a staged backward that calls the closed form is
   fine). It does the backward's work when the shared helpers hold at least
   half of the arithmetic (binary and unary operators, reductions such as
   `.sum`/`np.mean`) found in the staged backward and everything it reaches.
   So a helper that only unpacks the cache, or computes dgamma and dbeta for
   both, is fine; one that computes the whole gradient is not.
4. Uses this analysis cannot follow (`eval`/`exec` of a built string,
   `globals()[name]` with a computed name, `sys.modules`, `__main__`) do not
   fail the check; `suspicious_code` reports them.

Residual: a closed form that is itself a staged computation written out
afresh (not a copy) passes; identical code pasted into both functions is
reported as a copy.
"""
import ast
import functools
import io
import json
import os
import subprocess
import sys
import tokenize

STAGED = "batchnorm_backward"
CLOSED_FORM = "batchnorm_backward_alt"

# Modules whose import is worth a look: the references, the grader, and the
# tools that reach around the tests (frames, processes, raw memory).
REFERENCE_MODULES = {"torch", "triton", "jax", "tensorflow", "bngrade", "nbgrader", "jupyter_client"}
LOOK_MODULES = {
    "ctypes": "raw memory and C calls (ctypes)", "cffi": "C calls (cffi)",
    "importlib": "the import machinery (importlib)", "subprocess": "other processes (subprocess)",
    "multiprocessing": "other processes (multiprocessing)", "pty": "other processes (pty)",
    "threading": "threads", "_thread": "threads", "concurrent": "threads or processes (concurrent.futures)",
    "gc": "the garbage collector's object lists (gc)", "inspect": "stack frames and source (inspect)",
    "builtins": "the builtins module", "sys": None, "os": None, "socket": "sockets", "signal": "signal handlers",
    "marshal": "code objects (marshal)", "types": None, "runpy": "running other modules (runpy)",
    "code": "an interactive interpreter (code)", "codeop": "compiling code (codeop)", "IPython": "IPython itself",
    "ipykernel": "the kernel itself", "site": "the site module", "shutil": "copying or deleting files (shutil)",
    "tempfile": None, "atexit": "exit hooks (atexit)", "faulthandler": None, "sysconfig": None,
    "pickle": None, "dill": "pickled code (dill)", "zmq": "the kernel's sockets (zmq)",
    "__main__": "the notebook's own namespace (__main__)",
}
SYS_ATTRS = {"modules", "meta_path", "path_hooks", "path_importer_cache", "settrace", "setprofile", "_getframe",
             "addaudithook", "__stdout__", "__stderr__", "excepthook", "displayhook", "path", "executable",
             "_current_frames", "set_asyncgen_hooks"}
OS_ATTRS = {"system", "popen", "fork", "forkpty", "kill", "killpg", "setsid", "environ", "putenv", "getenv",
            "chdir", "remove", "unlink", "rename", "replace", "rmdir", "removedirs", "symlink", "link", "chmod",
            "makedirs", "mkdir", "open", "write", "dup2", "_exit", "abort", "getpid", "getppid"}
OS_PREFIXES = ("exec", "spawn", "posix_spawn")
DUNDER_ATTRS = {"__globals__", "__code__", "__builtins__", "__subclasses__", "__closure__", "__defaults__",
                "__kwdefaults__", "__import__", "__loader__", "__spec__", "__bases__", "__mro__", "__class__",
                "__dict__", "__getattribute__", "__reduce__", "__reduce_ex__", "__self__", "__func__"}
FRAME_ATTRS = {"f_back", "f_globals", "f_locals", "f_builtins", "f_code", "tb_frame", "tb_next", "gi_frame",
               "cr_frame", "ag_frame"}
DYNAMIC_CALLS = {"eval": "eval", "exec": "exec", "compile": "compile", "__import__": "__import__",
                 "globals": "globals()", "locals": "locals()", "vars": "vars()", "breakpoint": "breakpoint()",
                 "setattr": "setattr", "delattr": "delattr", "input": None}
WRITE_MODES = set("wax+")
# names that are modules in every notebook of the course (the locked setup cell imports them)
_USUAL_MODULES = {"np", "numpy", "json", "os", "sys", "math", "builtins", "get_ipython()"}
# IPython magics a notebook uses honestly (others, e.g. %run, %%writefile, %env, %%bash, are reported)
QUIET_MAGICS = {"timeit", "time", "matplotlib", "precision", "pprint", "pdoc", "who", "whos"}


# --------------------------------------------------------------------------
# Parsing a cell as IPython runs it
# --------------------------------------------------------------------------

def python_source(source):
    """The cell as the Python IPython runs: `!ls` -> get_ipython().system('ls'), `%time` -> run_line_magic."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:  # no IPython here: parse the cell as it is
        return source
    try:
        return TransformerManager().transform_cell(source)
    except Exception:  # a cell IPython itself cannot transform: parse it as written
        return source


@functools.lru_cache(maxsize=256)
def parse_cell(source):
    """The syntax tree of one cell, or None when it does not parse (the kernel would raise too).

    Cached: the checks below read the same cells; a tree is never changed
    by them beyond the `_parent` links the scanner sets.
    """
    try:
        return ast.parse(python_source(source))
    except (SyntaxError, ValueError):
        return None


def _cell_source(cell):
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _nbgrader(cell):
    return (cell.get("metadata") or {}).get("nbgrader") or {}


def _is_test_cell(cell):
    meta = _nbgrader(cell)
    return bool(meta.get("grade")) and not meta.get("solution")


def code_cells(nb, include_locked=True):
    """[(label, source)] of the notebook's code cells in order, test cells excepted.

    `nb`: a notebook (nbformat node or dict), a list of sources, or one source.
    The label is the cell's grade id, or `cell <n>` (counting from 1).
    """
    if isinstance(nb, str):
        return [("cell 1", nb)]
    if isinstance(nb, (list, tuple)):
        return [(f"cell {i + 1}", s) for i, s in enumerate(nb)]
    out = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code" or _is_test_cell(cell):
            continue
        if not include_locked and _nbgrader(cell).get("locked"):
            continue
        out.append((_nbgrader(cell).get("grade_id") or f"cell {i + 1}", _cell_source(cell)))
    return out


# --------------------------------------------------------------------------
# The suspicious-code report
# --------------------------------------------------------------------------

def _dotted(node):
    """'a.b.c' for a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "get_ipython":
        parts.append("get_ipython()")
        return ".".join(reversed(parts))
    return None


class _Scanner(ast.NodeVisitor):
    """Collects (line, what) for the constructs listed in the module docstring."""

    def __init__(self):
        self.found = []
        self.modules = {}  # local name -> module it was imported as (kept across cells)
        self.report = True  # False while reading the course's locked cells (their imports still count)

    def add(self, node, what):
        if self.report:
            self.found.append((getattr(node, "lineno", 0), what))

    def scan(self, tree):
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                child._parent = node
        self.visit(tree)

    # imports ---------------------------------------------------------------
    def _module(self, node, name, alias):
        top = name.split(".")[0]
        self.modules[alias or top] = name if alias else top
        if top == "bnkit" and name not in ("bnkit", "bnkit.gradcheck"):
            self.add(node, f"imports {name} (bnkit's reference)")
        elif top in REFERENCE_MODULES:
            self.add(node, f"imports {name}")
        elif LOOK_MODULES.get(top):
            self.add(node, f"imports {name}: {LOOK_MODULES[top]}")

    def visit_Import(self, node):
        for a in node.names:
            self._module(node, a.name, a.asname)

    def visit_ImportFrom(self, node):
        mod = node.module or ""
        top = mod.split(".")[0]
        if node.level:
            self.add(node, f"a relative import (from {'.' * node.level}{mod})")
        elif top == "bnkit":
            bad = [a.name for a in node.names if mod == "bnkit" and a.name != "gradcheck"] if mod == "bnkit" \
                else ([] if mod == "bnkit.gradcheck" else [a.name for a in node.names])
            if bad:
                self.add(node, f"imports {', '.join(bad)} from {mod} (bnkit's reference)")
        elif top in REFERENCE_MODULES:
            self.add(node, f"imports from {mod}")
        elif LOOK_MODULES.get(top):
            self.add(node, f"imports from {mod}: {LOOK_MODULES[top]}")
        elif top == "os" and any(a.name in OS_ATTRS or a.name.startswith(OS_PREFIXES) for a in node.names):
            self.add(node, f"imports {', '.join(a.name for a in node.names)} from os")
        elif top == "sys" and any(a.name in SYS_ATTRS for a in node.names):
            self.add(node, f"imports {', '.join(a.name for a in node.names)} from sys")
        for a in node.names:
            if a.name == "*":
                self.add(node, f"imports * from {mod}")
            self.modules[a.asname or a.name] = f"{mod}.{a.name}"

    # attributes ------------------------------------------------------------
    def visit_Attribute(self, node):
        name = _dotted(node)
        base = name.split(".")[0] if name else None
        module = self.modules.get(base, base) if base else None
        if node.attr in DUNDER_ATTRS:
            self.add(node, f"uses {node.attr}")
        elif node.attr in FRAME_ATTRS:
            self.add(node, f"reads stack frames ({node.attr})")
        elif module == "sys" and node.attr in SYS_ATTRS and name.count(".") == 1:
            self.add(node, f"uses sys.{node.attr}")
        elif module == "os" and name.count(".") == 1 and (node.attr in OS_ATTRS or node.attr.startswith(OS_PREFIXES)):
            self.add(node, f"uses os.{node.attr}")
        self.generic_visit(node)

    # calls -----------------------------------------------------------------
    def visit_Call(self, node):
        f = node.func
        if isinstance(f, ast.Name):
            if DYNAMIC_CALLS.get(f.id):
                self.add(node, f"calls {DYNAMIC_CALLS[f.id]}")
            elif f.id == "get_ipython":
                self._ipython(node)
            elif f.id == "getattr" and len(node.args) >= 2 and not isinstance(node.args[1], ast.Constant):
                self.add(node, "getattr with a computed name")
            elif f.id == "open":
                self._open(node)
        elif isinstance(f, ast.Attribute) and f.attr in ("write_text", "write_bytes", "symlink_to", "unlink",
                                                          "rename", "replace", "rmdir", "chmod", "touch"):
            self.add(node, f"changes files (.{f.attr})")
        self.generic_visit(node)

    def _ipython(self, node):
        """get_ipython(): a magic (`%timeit` is fine), a shell command (`!ls`) or the shell's hooks."""
        parent = getattr(node, "_parent", None)
        use = parent.attr if isinstance(parent, ast.Attribute) and parent.value is node else None
        call = getattr(parent, "_parent", None)
        if use in ("run_line_magic", "run_cell_magic") and isinstance(call, ast.Call) and call.args \
                and isinstance(call.args[0], ast.Constant):
            if call.args[0].value not in QUIET_MAGICS:
                self.add(node, f"runs the IPython magic %{call.args[0].value}")
        elif use in ("system", "getoutput"):
            self.add(node, "runs a shell command (!...)")
        elif use:
            self.add(node, f"uses IPython's shell ({use})")
        else:
            self.add(node, "takes hold of IPython's shell (get_ipython())")

    def _open(self, node):
        mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
        path = node.args[0] if node.args else None
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and WRITE_MODES & set(mode.value):
            self.add(node, f"opens a file for writing (mode {mode.value!r})")
        elif mode is not None and not isinstance(mode, ast.Constant):
            self.add(node, "opens a file with a computed mode")
        if isinstance(path, ast.Constant) and isinstance(path.value, str) and \
                (path.value.startswith(("/", "~")) or ".." in path.value):
            self.add(node, f"opens a file outside the working directory ({path.value!r})")

    # monkeypatching --------------------------------------------------------
    def _target(self, target, node):
        if isinstance(target, ast.Attribute):
            name = _dotted(target)
            base = name.split(".")[0] if name else None
            if base in self.modules or base in _USUAL_MODULES:
                self.add(node, f"assigns to {name} (changes a module others use)")
        elif isinstance(target, ast.Subscript):
            name = _dotted(target.value) or ""
            call = target.value
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and \
                    call.func.id in ("globals", "vars", "locals"):
                self.add(node, f"assigns through {call.func.id}()")
            elif name.endswith(("__dict__", "modules", "environ", "__builtins__")):
                self.add(node, f"assigns into {name}")
        elif isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self._target(t, node)

    def visit_Assign(self, node):
        for t in node.targets:
            self._target(t, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        self._target(node.target, node)
        self.generic_visit(node)

    def visit_Delete(self, node):
        for t in node.targets:
            if isinstance(t, (ast.Attribute, ast.Subscript)):
                name = _dotted(t.value if isinstance(t, ast.Subscript) else t) or "an object"
                base = name.split(".")[0]
                if base in self.modules or name.endswith(("meta_path", "modules", "path_hooks")):
                    self.add(node, f"deletes from {name}")
        self.generic_visit(node)



def suspicious_code(source, scanner=None):
    """[(line, what)] for one cell's code; [] for code with nothing to look at.

    Only the syntax tree is read: strings, comments and docstrings never count.
    A cell that does not parse gives one finding saying so. `scanner` carries
    the imports of earlier cells (`np` is numpy).
    """
    tree = parse_cell(source)
    if tree is None:
        return [(0, "the cell does not parse as Python")] if _has_code(source) else []
    scanner = scanner or _Scanner()
    scanner.found = []
    scanner.scan(tree)
    seen, out = set(), []
    for line, what in sorted(scanner.found):
        if (line, what) not in seen:
            seen.add((line, what))
            out.append((line, what))
    return out


def _has_code(source):
    try:
        return any(t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER,
                                  tokenize.INDENT, tokenize.DEDENT)
                   for t in tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return True


def suspicious_notebook(nb):
    """One line per finding in the student's cells (locked cells are the course's): 'cell, line n: what'."""
    lines, scanner = [], _Scanner()
    locked = {label for label, _ in code_cells(nb)} - {label for label, _ in code_cells(nb, include_locked=False)}
    for label, source in code_cells(nb):
        scanner.report = label not in locked
        for line, what in suspicious_code(source, scanner):
            if scanner.report:
                lines.append(f"{label}, line {line}: {what}" if line else f"{label}: {what}")
    return lines


# --------------------------------------------------------------------------
# The call graph: "the closed form must not call the staged backward"
# --------------------------------------------------------------------------

class _Node:
    """One top-level binding: what it is, and the bindings it uses."""

    def __init__(self, name, tree, label):
        self.name, self.tree, self.label = name, tree, label
        self.eager = []  # _Node objects used when the binding was made (defaults, decorators, right-hand side)
        self.lazy = set()  # names used when it runs (a function's free names), resolved at the end


def _bound_in(fn):
    """Names bound inside a function or lambda (its parameters and locals, nested scopes included)."""
    names = set()
    args = fn.args
    for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
        if a is not None:
            names.add(a.arg)
    body = fn.body if isinstance(fn.body, list) else [fn.body]
    for stmt in body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                names.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                names.add(node.name)
    return names


def _literal_uses(tree):
    """Names used through a literal string: getattr(x, "f"), globals()["f"], vars()["f"], x.__dict__["f"]."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str):
            out.add(node.args[1].value)
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, str) and isinstance(node.ctx, ast.Load):
            v = node.value
            namespace = isinstance(v, ast.Call) and isinstance(v.func, ast.Name) \
                and v.func.id in ("globals", "vars", "locals")
            if namespace or (isinstance(v, ast.Attribute) and v.attr == "__dict__"):
                out.add(node.slice.value)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) \
                and isinstance(node.value, ast.Name) and node.value.id in _MAIN_NAMES:
            out.add(node.attr)  # __main__.f is the notebook's f
    return out


_MAIN_NAMES = {"__main__"}


def _loaded_names(nodes):
    out = set()
    for tree in nodes:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                out.add(node.id)
        out |= _literal_uses(tree)
    return out


def _function_parts(fn):
    """(evaluated when defined, evaluated when called) parts of a def or lambda."""
    args = fn.args
    eager = list(args.defaults) + [d for d in args.kw_defaults if d is not None]
    eager += list(getattr(fn, "decorator_list", []))
    body = fn.body if isinstance(fn.body, list) else [fn.body]
    return eager, body


def _strip_docstring(body):
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[1:]
    return body


def _skeleton(fn):
    """The function's syntax tree with its name, docstring, parameters and locals renamed away."""
    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return None
    local = _bound_in(fn)
    order = {}

    class Rename(ast.NodeTransformer):
        def _new(self, name):
            return order.setdefault(name, f"_v{len(order)}") if name in local else name

        def visit_Name(self, node):
            return ast.copy_location(ast.Name(id=self._new(node.id), ctx=node.ctx), node)

        def visit_arg(self, node):
            return ast.copy_location(ast.arg(arg=self._new(node.arg), annotation=None), node)

    copy = ast.parse(ast.unparse(fn)).body[0]  # a fresh tree to rename in
    if isinstance(fn, ast.Lambda):
        copy = copy.value
    else:
        copy.name = "_"
        copy.body = _strip_docstring(copy.body) or [ast.Pass()]
        copy.decorator_list = []
        copy.returns = None
    copy = Rename().visit(copy)
    return ast.dump(copy, annotate_fields=False, include_attributes=False)


_REDUCTIONS = {"sum", "mean", "var", "std", "prod", "dot", "matmul", "einsum", "cumsum", "sqrt", "outer", "tensordot"}


def _arithmetic(tree):
    """How much computing a binding does: operators and reductions in it."""
    n = 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.BinOp, ast.AugAssign)) or (isinstance(node, ast.UnaryOp)
                                                              and isinstance(node.op, ast.USub)):
            n += 1
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            n += name in _REDUCTIONS
    return n


class CallGraph:
    """The notebook's top-level bindings and who uses whom (see the module docstring)."""

    def __init__(self, nb):
        self.current = {}  # name -> _Node, as the cells run
        self.unparsed = []
        for label, source in code_cells(nb):
            tree = parse_cell(source)
            if tree is None:
                self.unparsed.append(label)
                continue
            for stmt in tree.body:
                self._statement(stmt, label)
        self.final = dict(self.current)

    def _bind(self, name, tree, label, eager_trees=(), lazy_trees=()):
        node = _Node(name, tree, label)
        for t in eager_trees:
            for used in _loaded_names([t]):
                if used in self.current:
                    node.eager.append(self.current[used])
        node.lazy = _loaded_names(lazy_trees)
        self.current[name] = node
        return node

    def _statement(self, stmt, label):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            eager, body = _function_parts(stmt)
            node = self._bind(stmt.name, stmt, label, eager)
            node.lazy = _loaded_names(body) - _bound_in(stmt)
        elif isinstance(stmt, ast.ClassDef):
            self._bind(stmt.name, stmt, label, list(stmt.bases) + list(stmt.decorator_list), stmt.body)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if stmt.value is None:
                return
            for target in targets:
                self._assign(target, stmt.value, label)
        elif isinstance(stmt, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            # definitions inside a block still bind top-level names: take every branch
            for part in ("body", "orelse", "finalbody"):
                for s in getattr(stmt, part, []):
                    self._statement(s, label)
            for h in getattr(stmt, "handlers", []):
                for s in h.body:
                    self._statement(s, label)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for a in stmt.names:
                name = (a.asname or a.name).split(".")[0]
                self._bind(name, stmt, label)

    def _assign(self, target, value, label):
        if isinstance(target, ast.Name):
            if isinstance(value, ast.Name) and value.id in self.current:  # an alias: the same object
                self.current[target.id] = self.current[value.id]
            elif isinstance(value, ast.Lambda):
                eager, body = _function_parts(value)
                node = self._bind(target.id, value, label, eager)
                node.lazy = _loaded_names(body) - _bound_in(value)
            else:
                self._bind(target.id, value, label, [value])
        elif isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)) \
                and len(target.elts) == len(value.elts):
            pairs = list(zip(target.elts, value.elts))
            before = dict(self.current)  # a, b = b, a: every right-hand side is read first
            saved, self.current = self.current, before
            results = []
            for t, v in pairs:
                self.current = dict(before)
                self._assign(t, v, label)
                results.append({k: n for k, n in self.current.items() if before.get(k) is not n})
            self.current = saved
            for r in results:
                self.current.update(r)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self._assign(t, value, label)
        elif isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant) \
                and isinstance(target.slice.value, str) and isinstance(target.value, ast.Call) \
                and isinstance(target.value.func, ast.Name) and target.value.func.id in ("globals", "vars"):
            self._assign(ast.Name(id=target.slice.value, ctx=ast.Store()), value, label)

    def uses(self, node):
        """The bindings `node` uses directly."""
        out = list(node.eager)
        out += [self.final[n] for n in sorted(node.lazy) if n in self.final and self.final[n] is not node]
        return out

    def reach(self, start, avoid=None):
        """Every binding reachable from `start` (itself included), never entering `avoid`; with paths.

        Iterative, and linear: each binding keeps only the one it was reached
        from (`paths` rebuilds a path on demand).
        """
        parent = {id(start): None}
        seen = {id(start): start}
        todo = [start]
        while todo:
            node = todo.pop()
            for used in self.uses(node):
                if used is avoid or id(used) in seen:
                    continue
                seen[id(used)] = used
                parent[id(used)] = node
                todo.append(used)
        return seen, _Paths(parent, seen)


class _Paths:
    """paths[id(node)]: the bindings from the start to `node`, rebuilt from parent pointers."""

    def __init__(self, parent, seen):
        self.parent, self.seen = parent, seen

    def __getitem__(self, key):
        out, node = [self.seen[key]], self.parent[key]
        while node is not None:
            out.append(node)
            node = self.parent[id(node)]
        return list(reversed(out))

    def __contains__(self, key):
        return key in self.parent


def _path_text(path):
    return " -> ".join(n.name for n in path)


def closed_form_problem(nb, closed=CLOSED_FORM, staged=STAGED, graph=None):
    """Why `closed` may not stand on its own, or None (see the module docstring). Evidence, not a verdict.

    `nb`: the notebook (nbformat node or dict), a list of cell sources, or one source.
    """
    graph = graph or CallGraph(nb)
    alt, bwd = graph.final.get(closed), graph.final.get(staged)
    if alt is None or bwd is None:
        return None
    if alt is bwd:
        return f"{closed} is {staged} under another name; write the closed form itself"
    reached, paths = graph.reach(alt)
    if id(bwd) in reached:
        path = paths[id(bwd)]
        how = "calls" if len(path) == 2 else f"reaches ({_path_text(path)})"
        return f"{closed} {how} {staged}; the closed form must not use the staged backward"
    staged_reach, _ = graph.reach(bwd, avoid=alt)
    shared = [n for k, n in reached.items() if k in staged_reach and n is not alt and n is not bwd
              and isinstance(n.tree, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef))]
    if shared:
        total = sum(_arithmetic(n.tree) for n in staged_reach.values()
                    if isinstance(n.tree, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)))
        in_shared = sum(_arithmetic(n.tree) for n in shared)
        if total and in_shared * 2 >= total:
            names = ", ".join(sorted(n.name for n in shared))
            return (f"{closed} and {staged} share {names}, which does the backward's work "
                    f"({in_shared} of its {total} operations); the closed form must compute dx itself")
    staged_shape = _skeleton(bwd.tree)
    if staged_shape is not None and _arithmetic(bwd.tree):  # a thin wrapper is judged as shared
        for node in reached.values():
            if _skeleton(node.tree) == staged_shape:
                if node is alt:
                    return f"{closed} is a copy of {staged} (the same code); write the closed form itself"
                return (f"{closed} uses {node.name}, a renamed copy of {staged} ({_path_text(paths[id(node)])}); "
                        "the closed form must not use the staged backward")
    return None


# --------------------------------------------------------------------------
# Duplicated grade ids (a copy-pasted cell)
# --------------------------------------------------------------------------

def duplicate_grade_ids(nb):
    """{grade id: [indices of its cells]} for every grade id that appears more than once."""
    where = {}
    for i, cell in enumerate(nb.get("cells", [])):
        gid = _nbgrader(cell).get("grade_id")
        if gid and (_nbgrader(cell).get("grade") or _nbgrader(cell).get("solution") or _nbgrader(cell).get("locked")):
            where.setdefault(gid, []).append(i)
    return {g: idx for g, idx in where.items() if len(idx) > 1}


def keep_last_copies(nb):
    """Drop the nbgrader metadata of every copy but the last of a duplicated grade id, in place.

    The earlier copies stay in the notebook as plain cells (the kernel runs
    them, as in the student's Jupyter); nbgrader grades the last. Returns
    the lines for the instructor, [] when nothing was duplicated.
    """
    notes = []
    for gid, idx in sorted(duplicate_grade_ids(nb).items()):
        for i in idx[:-1]:
            nb["cells"][i]["metadata"].pop("nbgrader", None)
        notes.append(f"grade id {gid!r} appears in {len(idx)} cells (cells {', '.join(str(i + 1) for i in idx)}): "
                     f"graded the last copy (cell {idx[-1] + 1}); the others ran as ordinary cells")
    return notes


# --------------------------------------------------------------------------
# Evidence for a person: how the backwards are built (ranked, never a score)
# --------------------------------------------------------------------------
#
# "The closed form is not the staged graph" and "the backward is derived, not
# a numerical derivative of the forward" are code-review properties. A
# static analysis cannot decide them: it misses routes (eval of a built
# string, an object filled at run time) and flags honest structure (a class
# holding both backwards, closures from one factory, a self-check branch that
# never runs). So nothing here changes a score: the grader measures what can
# be measured (the numbers, and the cases at scale), and this lists what a
# person should read, strongest first, with cell and line.

STRONG, WORTH_A_LOOK, NOTE = 3, 2, 1
RANK_WORDS = {STRONG: "strong", WORTH_A_LOOK: "worth a look", NOTE: "note"}
BACKWARDS = ("batchnorm_backward", "batchnorm_backward_alt", "spatial_batchnorm_backward", "layernorm_backward")
FORWARDS = ("batchnorm_forward", "spatial_batchnorm_forward", "layernorm_forward")
HOOK_EVENTS = {"pre_run_cell", "post_run_cell", "pre_execute", "post_execute", "shell_initialized"}
NUMERIC_NAMES = ("gradcheck", "numerical_gradient", "eval_numerical", "finite_diff", "complex_step")
MAX_EVIDENCE = 40


def _line(source, lineno):
    lines = source.split("\n")
    text = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
    return text[:120] + ("..." if len(text) > 120 else "")


@functools.lru_cache(maxsize=256)
def _line_offset(source):
    """Lines IPython's transformation dropped at the top of a cell (leading blank lines): tree lines + this."""
    lines = source.split("\n")
    k = 0
    while k < len(lines) and not lines[k].strip():
        k += 1
    first = python_source(source).split("\n")[0].strip()
    return k if k < len(lines) and first == lines[k].strip() else 0


def _where(label, source, node):
    lineno = getattr(node, "lineno", 0)
    if not lineno:
        return label
    lineno += _line_offset(source)
    return f"{label}, line {lineno}: `{_line(source, lineno)}`"


def _defs_named(tree, names):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in names]


def _route_findings(label, source, tree, closed, staged):
    """Routes the call graph does not follow, found in one cell: (rank, where, what)."""
    out = []
    top_defs = {id(n) for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    for node in ast.walk(tree):
        # the closed form's name bound some other way than a top-level def or assignment
        how = None
        if isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)) and closed in _store_names(node.target):
            how = "a for loop's target"
        elif isinstance(node, ast.ExceptHandler) and node.name == closed:
            how = "an except clause's name"
        elif isinstance(node, ast.NamedExpr) and getattr(node.target, "id", None) == closed:
            how = "a walrus (:=)"
        elif isinstance(node, (ast.With, ast.AsyncWith)) and any(
                closed in _store_names(i.optional_vars) for i in node.items if i.optional_vars is not None):
            how = "a with statement's name"
        elif isinstance(node, ast.Global) and closed in node.names:
            how = "a `global` declaration inside a function (rebinds it when that function runs)"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == closed \
                and id(node) not in top_defs and node not in _block_defs(tree):
            how = "a def nested in another function"
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name) == closed for a in node.names):
            how = "an import"
        if how:
            out.append((STRONG, _where(label, source, node), f"{closed} is bound by {how}"))
        # the staged backward handed around as a value (stored, appended, registered, passed)
        if isinstance(node, ast.Call) and _call_name(node).split(".")[-1] != "run_cases":  # the tests' harness
            for arg in list(node.args) + [k.value for k in node.keywords]:
                if isinstance(arg, ast.Name) and arg.id == staged:
                    out.append((WORTH_A_LOOK, _where(label, source, node),
                                f"{staged} is passed as a value to {_call_name(node)} (it can be kept and called "
                                "later, e.g. by the closed form)"))
            if _call_name(node).endswith("register") and node.args and isinstance(node.args[0], ast.Constant) \
                    and node.args[0].value in HOOK_EVENTS:
                out.append((STRONG, _where(label, source, node),
                            f"registers an IPython {node.args[0].value} hook: it runs before or after every cell, "
                            "the test cells included, and can rebind the functions they test"))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Name) \
                and node.value.id == staged:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(not isinstance(t, ast.Name) for t in targets):
                out.append((WORTH_A_LOOK, _where(label, source, node),
                            f"{staged} is stored in an attribute or a container"))
        elif isinstance(node, (ast.Dict, ast.Tuple, ast.List, ast.Set)):
            values = node.values if isinstance(node, ast.Dict) else node.elts
            if any(isinstance(v, ast.Name) and v.id in (staged,) for v in values):
                out.append((WORTH_A_LOOK, _where(label, source, node),
                            f"{staged} is put in a {type(node).__name__.lower()} (e.g. the forward's cache)"))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == staged and node.decorator_list:
            out.append((WORTH_A_LOOK, _where(label, source, node),
                        f"{staged} is decorated (a decorator can keep it for the closed form)"))
    # the closed form calling what it reads from data: cache["..."](...), f.attr(...), table[0](...)
    for fn in _defs_named(tree, (closed,)):
        for node in ast.walk(fn):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
                out.append((WORTH_A_LOOK, _where(label, source, node),
                            f"{closed} calls a function it reads from a container ({_unparse(node.func)})"))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in BACKWARDS + FORWARDS:
                out.append((WORTH_A_LOOK, _where(label, source, node),
                            f"{closed} calls an attribute of a function ({_unparse(node.func)})"))
    return out


def _block_defs(tree):
    """Defs inside top-level if/try/with/for blocks (they still bind top-level names)."""
    out, todo = [], [s for s in tree.body if isinstance(s, (ast.If, ast.Try, ast.With, ast.For, ast.While))]
    while todo:
        stmt = todo.pop()
        for part in ("body", "orelse", "finalbody"):
            for s in getattr(stmt, part, []):
                if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out.append(s)
                elif isinstance(s, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                    todo.append(s)
        for h in getattr(stmt, "handlers", []):
            todo.append(h)
    return out


def _store_names(target):
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


def _call_name(call):
    return _dotted(call.func) or "a call"


def _unparse(node):
    try:
        text = ast.unparse(node)
    except Exception:
        return "?"
    return text[:60] + ("..." if len(text) > 60 else "")


def _numeric_findings(graph, label_sources):
    """Backwards that may differentiate the forward numerically: they reach it, or use complex numbers."""
    out = []
    for name in BACKWARDS:
        node = graph.final.get(name)
        if node is None or not isinstance(node.tree, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        reached, paths = graph.reach(node)
        source = label_sources.get(node.label, "")
        for fwd in FORWARDS:
            target = graph.final.get(fwd)
            if target is not None and id(target) in reached and target is not node:
                out.append((WORTH_A_LOOK, _where(node.label, source, node.tree),
                            f"{name} reaches the forward {fwd} ({_path_text(paths[id(target)])}): a backward "
                            "needs the forward's cache, not the forward; calling it suggests a numerical "
                            "derivative. A derivative along dout (one forward pass: batch norm's Jacobian is "
                            "symmetric) passes the cases at scale; read it"))
        for sub in ast.walk(node.tree):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, complex):
                out.append((WORTH_A_LOOK, _where(node.label, source, sub),
                            f"{name} uses complex numbers (a complex-step derivative?)"))
                break
        names = {n.id for n in ast.walk(node.tree) if isinstance(n, ast.Name)} | \
            {n.attr for n in ast.walk(node.tree) if isinstance(n, ast.Attribute)}
        hits = sorted(n for n in names if any(k in n.lower() for k in NUMERIC_NAMES))
        if hits:
            out.append((WORTH_A_LOOK, _where(node.label, source, node.tree),
                        f"{name} uses {', '.join(hits[:3])} (a numerical gradient?)"))
    return out


def closed_form_evidence(nb, closed=CLOSED_FORM, staged=STAGED):
    """Ranked evidence for the person grading the derivation: [(rank, where, what)], strongest first.

    Never changes a score. Includes the call graph's verdict
    (`closed_form_problem`), routes it does not follow (names bound by
    for/except/walrus/global, the staged backward handed around as a value,
    the closed form calling what it reads from a container or an attribute,
    IPython hooks) and signs of a numerical derivative in any backward.
    """
    cells = code_cells(nb)
    label_sources = dict(cells)
    found = []
    graph = CallGraph(nb)
    problem = closed_form_problem(nb, closed=closed, staged=staged, graph=graph)
    if problem:
        alt = graph.final.get(closed)
        where = _where(alt.label, label_sources.get(alt.label, ""), alt.tree) if alt else closed
        found.append((STRONG, where, "call graph: " + problem))
    for label, source in cells:
        tree = parse_cell(source)
        if tree is not None:
            found += _route_findings(label, source, tree, closed, staged)
    found += _numeric_findings(graph, label_sources)
    seen, out = set(), []
    for item in sorted(found, key=lambda f: -f[0]):  # stable: cell order within a rank
        if (item[1], item[2]) not in seen:
            seen.add((item[1], item[2]))
            out.append(item)
    return out[:MAX_EVIDENCE]


def evidence_lines(evidence):
    return [f"[{RANK_WORDS[rank]}] {where}: {what}" for rank, where, what in evidence]


# --------------------------------------------------------------------------
# The whole analysis, within a budget (a subprocess with rlimits and a timeout)
# --------------------------------------------------------------------------

MAX_SUSPICIOUS = 200
MAX_CODE_BYTES = 256 * 1024  # the course's solutions are ~10 KiB a notebook


def analyse(nb, max_code_bytes=MAX_CODE_BYTES):
    """{"suspicious": [...], "evidence": [...], "budget": why or None}: everything the report says about code."""
    size = sum(len(source.encode("utf-8", "replace")) for _, source in code_cells(nb))
    if size > max_code_bytes:
        return {"suspicious": [], "evidence": [], "budget": (
            f"analysis budget exceeded: the code cells hold {size} bytes, more than the {max_code_bytes} "
            "the analysis reads; nothing was analysed (read the notebook)")}
    suspicious = suspicious_notebook(nb)
    if len(suspicious) > MAX_SUSPICIOUS:
        suspicious = suspicious[:MAX_SUSPICIOUS] + [f"... and {len(suspicious) - MAX_SUSPICIOUS} more"]
    return {"suspicious": suspicious, "evidence": evidence_lines(closed_form_evidence(nb)), "budget": None}


def _code_only(nb):
    """The notebook reduced to what the analysis reads (code cells, nbgrader metadata), as plain data."""
    cells = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            meta = (cell.get("metadata") or {}).get("nbgrader") or {}
            cells.append({"cell_type": "code", "source": _cell_source(cell),
                          "metadata": {"nbgrader": {k: meta.get(k) for k in ("grade", "solution", "locked",
                                                                               "grade_id") if k in meta}}})
    return {"cells": cells}


def analyse_within_budget(nb, timeout=60, memory_mb=1024, max_code_bytes=MAX_CODE_BYTES):
    """`analyse(nb)` in a child process bounded in time, memory and input size.

    The grader's own memory and time never depend on the shape of a
    student's code: past the budget the answer is "analysis budget
    exceeded", for the instructor; scores do not depend on it either way.
    """
    data = json.dumps(_code_only(nb))
    if len(data) > 4 * max_code_bytes:
        return {"suspicious": [], "evidence": [],
                "budget": f"analysis budget exceeded: {len(data)} bytes of code cells; nothing was analysed"}

    def limits():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_CPU, (timeout, timeout + 5))
        os.nice(5)

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL")}
    env["PYTHONPATH"] = here
    argv = [sys.executable, "-s", "-c",
            "import json, sys; from bngrade.integrity import analyse; "
            f"json.dump(analyse(json.load(sys.stdin), {int(max_code_bytes)}), sys.stdout)"]
    try:
        proc = subprocess.run(argv, input=data, capture_output=True, text=True, timeout=timeout, env=env,
                              preexec_fn=limits, cwd=here)
    except subprocess.TimeoutExpired:
        return {"suspicious": [], "evidence": [], "budget": f"analysis budget exceeded: no answer in {timeout} s"}
    try:
        out = json.loads(proc.stdout)
        assert isinstance(out, dict) and all(isinstance(out.get(k), list) for k in ("suspicious", "evidence"))
        return out
    except Exception:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        return {"suspicious": [], "evidence": [], "budget": (
            f"analysis budget exceeded or the analysis failed (exit {proc.returncode}: {tail[0][:160]})")}
