"""Bad input gets a clear error naming the problem and the shapes involved."""
import numpy as np
import pytest

from bnkit import BatchNorm, fast, norms, staged

IMPLS = [staged, fast]


def _x(shape=(4, 3)):
    return np.random.default_rng(0).normal(size=shape)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which,bad", [("gamma", (1, 3)), ("gamma", (4,)), ("beta", (3, 1)), ("beta", ())])
def test_wrong_gamma_beta_shape(impl, which, bad):
    args = dict(gamma=np.ones(3), beta=np.zeros(3))
    args[which] = np.ones(bad)
    msg = rf"{which} must have shape \(3,\) for an input of shape \(4, 3\), got shape {re_shape(bad)}"
    with pytest.raises(ValueError, match=msg):
        impl.batchnorm_forward(_x(), args["gamma"], args["beta"], {})


def re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [(4, 1), (1, 3), (3, 4), (12,)])
def test_mismatched_dout(impl, bad):
    _, cache = impl.batchnorm_forward(_x(), np.ones(3), np.zeros(3), {})
    msg = rf"dout must have the shape of the forward output \(4, 3\), got shape {re_shape(bad)}"
    with pytest.raises(ValueError, match=msg):
        impl.batchnorm_backward(np.ones(bad), cache)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1)])
def test_one_value_per_channel_in_training(impl, shape):
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training.*" + re_shape(shape)):
        impl.batchnorm_forward(_x(shape), np.ones(3), np.zeros(3), {"mode": "train"})


@pytest.mark.parametrize("impl", IMPLS)
def test_one_value_per_channel_is_fine_in_eval(impl):
    out, _ = impl.batchnorm_forward(_x((1, 3)), np.ones(3), np.zeros(3), {"mode": "eval"})
    assert out.shape == (1, 3)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan")])
def test_non_positive_eps(impl, eps):
    with pytest.raises(ValueError, match=r"eps must be a positive number, got eps="):
        impl.batchnorm_forward(_x(), np.ones(3), np.zeros(3), {"eps": eps})


@pytest.mark.parametrize("impl", IMPLS)
def test_unknown_mode(impl):
    with pytest.raises(ValueError, match=r"mode must be 'train' or 'eval' \('test' is an alias\), got mode='training'"):
        impl.batchnorm_forward(_x(), np.ones(3), np.zeros(3), {"mode": "training"})


@pytest.mark.parametrize("impl", IMPLS)
def test_test_is_an_alias_for_eval(impl):
    p_test = {"mode": "test", "running_mean": np.ones(3), "running_var": np.full(3, 4.0)}
    p_eval = {**p_test, "mode": "eval"}
    np.testing.assert_array_equal(impl.batchnorm_forward(_x(), np.ones(3), np.zeros(3), p_test)[0],
                                  impl.batchnorm_forward(_x(), np.ones(3), np.zeros(3), p_eval)[0])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_integer_inputs(impl, dtype):
    msg = rf"x must hold floating-point values, got dtype {np.dtype(dtype)} with shape \(4, 3\)"
    with pytest.raises(TypeError, match=msg):
        impl.batchnorm_forward(np.ones((4, 3), dtype), np.ones(3), np.zeros(3), {})


@pytest.mark.parametrize("impl", IMPLS)
def test_integer_gamma(impl):
    with pytest.raises(TypeError, match=r"gamma must hold floating-point values, got dtype int64"):
        impl.batchnorm_forward(_x(), np.ones(3, np.int64), np.zeros(3), {})


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("key", ["running_mean", "running_var"])
def test_running_stats_of_the_wrong_shape(impl, key):
    bn_param = {key: np.ones(4)}
    msg = rf"{key} must have shape \(3,\) for an input of shape \(4, 3\), got shape \(4,\)"
    with pytest.raises(ValueError, match=msg):
        impl.batchnorm_forward(_x(), np.ones(3), np.zeros(3), bn_param)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_input_loses_nothing(impl):
    """A refused call leaves bn_param's running statistics untouched."""
    bn_param = {"running_mean": np.arange(3.0), "running_var": np.full(3, 2.0), "num_batches_tracked": 5}
    with pytest.raises(ValueError):
        impl.batchnorm_forward(_x(), np.ones(4), np.zeros(3), bn_param)
    np.testing.assert_array_equal(bn_param["running_mean"], np.arange(3.0))
    np.testing.assert_array_equal(bn_param["running_var"], np.full(3, 2.0))
    assert bn_param["num_batches_tracked"] == 5


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape,axis,msg", [
    ((5,), 1, r"batch norm expects an input of shape \(N, C\) or \(N, C, \*\), got shape \(5,\)"),
    ((4, 3), 2, r"axis=2 is out of range for an input of shape \(4, 3\)"),
    ((4, 3), 0, r"axis=0 is the batch axis"),
])
def test_bad_shapes_and_axes(impl, shape, axis, msg):
    with pytest.raises(ValueError, match=msg):
        impl.batchnorm_forward(_x(shape), np.ones(3), np.zeros(3), {}, axis=axis)


@pytest.mark.parametrize("momentum", [-0.1, 1.5])
def test_momentum_out_of_range(momentum):
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\] or be None"):
        fast.batchnorm_forward(_x(), np.ones(3), np.zeros(3), {"momentum": momentum})


def test_layer_refuses_the_wrong_channel_count():
    with pytest.raises(ValueError, match=r"BatchNorm\(4\) got an input of shape \(4, 3\) with 3 channels on axis 1"):
        BatchNorm(4).forward(_x())


def test_layer_backward_before_forward():
    with pytest.raises(RuntimeError, match="backward called before forward"):
        BatchNorm(3).backward(np.ones((4, 3)))


def test_norms_refuse_bad_shapes():
    with pytest.raises(ValueError, match=r"spatial batch norm expects x of shape \(N, C, H, W\), got shape \(4, 3\)"):
        norms.spatial_batchnorm_forward(_x(), np.ones(3), np.zeros(3), {})
    msg = r"G must be a positive divisor of C=3 \(input shape \(2, 3, 2, 2\)\), got G=2"
    with pytest.raises(ValueError, match=msg):
        norms.groupnorm_forward(_x((2, 3, 2, 2)), np.ones(3), np.zeros(3), 2)
    msg = r"gamma must have shape \(3,\) for an input of shape \(4, 3\), got shape \(4,\)"
    with pytest.raises(ValueError, match=msg):
        norms.layernorm_forward(_x(), np.ones(4), np.zeros(3))


@pytest.mark.parametrize("kw,msg", [
    (dict(momentum=1.5), r"momentum must lie in \[0, 1\] or be None, got momentum=1.5"),
    (dict(eps=0.0), r"eps must be a positive number, got eps=0.0"),
])
def test_layer_refuses_bad_options_at_construction(kw, msg):
    with pytest.raises(ValueError, match=msg):
        BatchNorm(3, **kw)
