"""The contract between `bnkit.staged` and the book's chapter 4: the gates are
`staged.GATES`, and `batchnorm_backward` marks each one's code with a
`# <name>:` comment, in the reverse order. The chapter's table is built from
`staged.backward_code_by_gate()`; this test fails first if that drifts."""
import inspect

from bnkit import staged


def test_backward_visits_the_gates_in_reverse():
    rows = staged.backward_code_by_gate()
    assert [name for name, _ in rows] == [g.name for g in reversed(staged.GATES)]
    for name, code in rows:
        assert code, f"gate {name!r} has no code under its comment"
        assert not any(line.startswith(("#", "else", "return")) for line in code), (name, code)


def test_each_gate_code_writes_its_gradients():
    """Each gate's code assigns the gradients of that gate (d<input>), so the
    table's code column is the chain rule of that gate."""
    rows = dict(staged.backward_code_by_gate())
    grads = {"mean": ["dx"], "centre": ["dmu", "dx"], "square": ["dxc"], "variance": ["dsq"],
             "sqrt": ["dvar"], "invert": ["dstd"], "normalise": ["dinv_std", "dxc"],
             "scale": ["dgamma", "dxhat"], "shift": ["dbeta", "dscaled"]}
    assert set(grads) == {g.name for g in staged.GATES}
    for gate in staged.GATES:
        targets = [line.split("=")[0].strip() for line in rows[gate.name] if "=" in line]
        for grad in grads[gate.name]:
            assert grad in targets, (gate.name, grad, rows[gate.name])


def test_the_gates_form_one_chain_from_x_to_out():
    produced = {"x", "gamma", "beta"}
    for gate in staged.GATES:
        assert set(gate.inputs) <= produced, gate
        produced.add(gate.output)
    assert staged.GATES[-1].output == "out"


def test_a_renamed_gate_comment_breaks_the_contract():
    """The reader really reads the source: a gate whose comment is renamed vanishes."""
    source = inspect.getsource(staged.batchnorm_backward)
    assert "# invert:" in source
    names = [name for name, _ in staged.backward_code_by_gate(source.replace("# invert:", "# inverse:"))]
    assert "invert" not in names and len(names) == len(staged.GATES) - 1
