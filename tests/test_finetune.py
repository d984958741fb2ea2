from collections import OrderedDict

import numpy as np
import pytest

from cnnkit import finetune
from cnnkit.nn.activation import ReLU
from cnnkit.nn.containers import Sequential
from cnnkit.nn.conv import Conv2d
from cnnkit.nn.flatten import Flatten
from cnnkit.nn.linear import Linear
from cnnkit.nn.normalization import BatchNorm2d
from cnnkit.optim import SGD


def small_net(rng):
    return Sequential(OrderedDict(
        features=Sequential(Conv2d(1, 4, 3, padding=1, generator=rng), BatchNorm2d(4), ReLU()),
        flatten=Flatten(),
        classifier=Sequential(Linear(4 * 6 * 6, 8, generator=rng), ReLU(), Linear(8, 5, generator=rng)),
    ))


def test_freeze_by_pattern_and_prefix(rng):
    model = small_net(rng)
    frozen = finetune.freeze(model, "features")
    assert frozen == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias"]
    assert finetune.count_parameters(model)[0] == 8 * 144 + 8 + 5 * 8 + 5
    finetune.unfreeze(model, "features.0.*")
    assert model.features[0].weight.requires_grad and not model.features[1].weight.requires_grad
    with pytest.raises(ValueError, match="'featurs'"):
        finetune.freeze(model, "featurs")


def test_frozen_parameters_get_no_gradient_and_no_update(rng):
    model = small_net(rng)
    finetune.freeze(model, "features,classifier.0")
    before = model.features[0].weight.data.copy()
    opt = SGD(model.parameters(), lr=0.1)
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    model(x)
    model.backward(np.ones((2, 5), np.float32), input_grad=False)
    assert model.features[0].weight.grad is None and model.classifier[0].weight.grad is None
    assert model.classifier[2].weight.grad is not None
    opt.step()
    np.testing.assert_array_equal(model.features[0].weight.data, before)


def test_replace_head_finds_the_last_linear_and_freezes_the_body(rng):
    model = small_net(rng)
    assert finetune.find_head(model) == "classifier.2"
    finetune.replace_head(model, 3, freeze_body=True, generator=rng)
    assert model.classifier[2].out_features == 3
    assert model(rng.standard_normal((2, 1, 6, 6)).astype(np.float32)).shape == (2, 3)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["classifier.2.weight", "classifier.2.bias"]
    with pytest.raises(ValueError, match="num_classes"):
        finetune.replace_head(model, 0)


def test_replace_head_knows_fc_and_classifier_6(rng):
    fc_model = Sequential(OrderedDict(body=Linear(4, 4), fc=Linear(4, 10)))
    assert finetune.find_head(fc_model) == "fc"
    vgg_like = Sequential(OrderedDict(classifier=Sequential(*[Linear(4, 4) for _ in range(6)], Linear(4, 10))))
    assert finetune.find_head(vgg_like) == "classifier.6"


def test_param_groups_give_each_pattern_its_rate(rng):
    model = small_net(rng)
    finetune.freeze(model, "features.1")
    groups = finetune.param_groups(model, {"classifier.2": 0.1}, default_lr=0.001)
    assert [g["lr"] for g in groups] == [0.1, 0.001]
    assert len(groups[0]["params"]) == 2 and len(groups[1]["params"]) == 4  # frozen BN left out
    opt = SGD(groups, lr=0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.001]


def test_freeze_batchnorm_survives_train(rng):
    model = small_net(rng)
    finetune.freeze_batchnorm(model)
    bn = model.features[1]
    model.train()
    assert not bn.training and model.classifier.training
    stats = bn.running_mean.copy()
    model(rng.standard_normal((4, 1, 6, 6)).astype(np.float32) + 3)
    np.testing.assert_array_equal(bn.running_mean, stats)  # eval mode: no update
    assert not bn.weight.requires_grad
    finetune.unfreeze_batchnorm(model)
    model.train()
    assert bn.training and bn.weight.requires_grad


def test_load_pretrained_skips_the_old_head(rng):
    source = small_net(rng)
    target = finetune.replace_head(small_net(np.random.default_rng(1)), 3)
    skipped = finetune.load_pretrained(target, source.state_dict())
    assert skipped == ["classifier.2.weight", "classifier.2.bias"]
    np.testing.assert_array_equal(target.features[0].weight.data, source.features[0].weight.data)


class Recorder(ReLU):
    calls = 0

    def backward(self, dy, input_grad=True):
        Recorder.calls += 1
        return super().backward(dy, input_grad)


def test_sequential_skips_a_frozen_prefix(rng):
    model = Sequential(Conv2d(1, 2, 3, generator=rng), Recorder(), Flatten(), Linear(8, 2, generator=rng))
    finetune.freeze(model, "0")
    Recorder.calls = 0
    model(rng.standard_normal((1, 1, 4, 4)).astype(np.float32))
    model.backward(np.ones((1, 2), np.float32), input_grad=False)
    assert Recorder.calls == 0
