"""What a training step really allocates, for the tests that check ``summary``'s memory estimate."""
import tracemalloc

import numpy as np

from cnnkit.nn.loss import CrossEntropyLoss


def measured_step_peak(model, shape, batch, optimizer_cls, **opt_kwargs) -> int:
    """tracemalloc's peak during the second of two training steps (the optimizer state exists by
    then), on random images of ``shape`` and labels of 10 classes. Start tracemalloc before building
    the model to count its parameters and optimizer state in the peak."""
    opt = optimizer_cls(model.parameters(), **opt_kwargs)
    lossf = CrossEntropyLoss()
    rng = np.random.default_rng(0)

    def step():
        x = rng.standard_normal((batch,) + tuple(shape)).astype(np.float32)
        labels = rng.integers(0, 10, batch)
        opt.zero_grad()
        lossf(model(x), labels)
        model.backward(lossf.backward(), input_grad=False)
        opt.step()

    step()
    tracemalloc.reset_peak()
    step()
    return tracemalloc.get_traced_memory()[1]
