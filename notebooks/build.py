"""Write the example notebooks from the cell sources below, execute them and store the outputs.

This file is the source of the notebooks: edit a cell here, then rebuild, so the stored
outputs (plots included) always come from the code shown above them.

    pip install -e ".[test]"                 # nbclient, nbformat, ipykernel, matplotlib
    python notebooks/build.py                # write and execute every notebook
    python notebooks/build.py 02 04          # only the notebooks whose names contain "02" or "04"
    python notebooks/build.py --no-execute   # write the cells without outputs

Each notebook runs in a fresh kernel with 8 host (CPU) devices, as in CI, so the stored
output of `04_colab_tpu.ipynb` shows a mesh of 8 devices. `tests/test_notebooks.py` runs the
same notebooks and checks that their stored cells match this file.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
XLA_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
REPO = "kopt-dev/kopt"  # GitHub owner/name for the Colab link (a placeholder until the repo is public)

COLAB_INSTALL = """\
# kopt is not on PyPI yet (the PyPI package named `kopt` is an unrelated project). In Colab,
# upload or clone a kopt checkout into ./kopt and install it from there; anywhere else, use
# the kopt already installed.
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "./kopt"], check=True)
"""


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(textwrap.dedent(text).strip())


# --------------------------------------------------------------------------- 01
QUICKSTART = [
    md("""
    # Quickstart: the functional layer

    `kopt.functional` gives pure `init`/`update` transforms that you `jax.jit` inside your
    own training step, as with optax. This notebook trains a small MLP classifier, written in
    plain JAX, on synthetic data:

    - a jitted training step around `tx.update` and `kopt.functional.apply_updates`;
    - `kopt.functional.chain` of gradient clipping (`clip_by_global_norm`) and AdamW;
    - a learning-rate schedule from `kopt.schedules` (linear warmup, then cosine decay);
    - loss, learning-rate and gradient-norm plots.

    It runs in a few seconds on a CPU.
    """),
    code(COLAB_INSTALL),
    code("""
    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    import kopt

    print(f"kopt {kopt.__version__}, jax {jax.__version__}, running on {jax.devices()[0].platform}")
    """),
    md("""
    ## Data: three interleaved spirals

    900 points in the plane, 300 per class. A linear model cannot separate them; a small MLP
    can.
    """),
    code("""
    def make_spirals(n_per_class=300, n_classes=3, noise=0.25, seed=0):
        rng = np.random.default_rng(seed)
        xs, ys = [], []
        for c in range(n_classes):
            radius = np.linspace(0.05, 1.0, n_per_class)
            angle = 2 * np.pi * c / n_classes + 4.0 * radius + noise * rng.standard_normal(n_per_class)
            xs.append(np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1))
            ys.append(np.full(n_per_class, c))
        return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int32)


    x_train, y_train = make_spirals()
    plt.figure(figsize=(4, 4))
    plt.scatter(x_train[:, 0], x_train[:, 1], c=y_train, s=6, cmap="viridis")
    plt.title("training data")
    plt.axis("equal")
    plt.show()
    """),
    md("""
    ## The model: an MLP as a pytree of arrays

    Parameters are a nested dict; the model and the loss are pure functions of it.
    """),
    code("""
    def init_mlp(seed, sizes=(2, 64, 64, 3)):
        \"\"\"He-normal kernels and zero biases (drawn with numpy: cheaper than compiling jax.random).\"\"\"
        rng = np.random.default_rng(seed)
        params = {}
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            params[f"dense{i}"] = {
                "kernel": jnp.asarray(rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in), jnp.float32),
                "bias": jnp.zeros((n_out,)),
            }
        return params


    def mlp(params, x):
        *hidden, last = params.values()
        for layer in hidden:
            x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
        return x @ last["kernel"] + last["bias"]


    def loss_fn(params, x, y):
        log_probs = jax.nn.log_softmax(mlp(params, x))
        return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))


    params = init_mlp(seed=0)
    print(jax.tree.map(jnp.shape, params))
    """),
    md("""
    ## The optimizer: clipping, AdamW and a schedule, chained

    `chain` runs its transforms in order: the gradients are first scaled so that their
    global norm is at most 1, then AdamW turns them into updates. The learning rate follows
    `WarmupCosineDecay`: a linear warmup over 30 steps to 1e-2, then a cosine decay to 1e-4
    at step 300.

    The schedule lives in the optimizer state as a traced value: stepping through it (or
    `kopt.functional.set_learning_rate` with a float) never recompiles the step.
    """),
    code("""
    STEPS, BATCH = 300, 128
    schedule = kopt.schedules.WarmupCosineDecay(
        peak_learning_rate=1e-2, warmup_steps=30, decay_steps=STEPS - 30, end_learning_rate=1e-4
    )
    tx = kopt.functional.chain(
        kopt.functional.clip_by_global_norm(1.0),
        kopt.functional.adamw(learning_rate=schedule, weight_decay=1e-4),
    )
    opt_state = tx.init(params)
    print("updates applied:", int(kopt.functional.iteration_count(opt_state)))
    print("first learning rate:", float(kopt.functional.current_learning_rate(opt_state)))
    """),
    md("""
    ## A jitted training step

    The step is one compiled function: loss and gradients, the optimizer update, and the
    parameter update. It also returns the gradients' global norm *before* clipping, to show
    the clipping at work.
    """),
    code("""
    def global_norm(tree):
        return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))


    @jax.jit
    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = kopt.functional.apply_updates(params, updates)
        return params, opt_state, loss, global_norm(grads)


    rng = np.random.default_rng(1)
    history = {"loss": [], "lr": [], "grad_norm": []}
    for step in range(STEPS):
        idx = rng.integers(0, len(x_train), BATCH)
        history["lr"].append(kopt.functional.current_learning_rate(opt_state))
        params, opt_state, loss, grad_norm = train_step(params, opt_state, x_train[idx], y_train[idx])
        history["loss"].append(loss)
        history["grad_norm"].append(grad_norm)
        if step % 100 == 0 or step == STEPS - 1:
            print(f"step {step:4d}  loss {float(loss):.4f}")

    history = {k: np.asarray(jnp.stack(v)) for k, v in history.items()}
    accuracy = float(jnp.mean(jnp.argmax(mlp(params, x_train), axis=1) == y_train))
    print(f"updates applied: {int(kopt.functional.iteration_count(opt_state))}, "
          f"training accuracy: {accuracy:.1%}")
    """),
    code("""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(history["loss"], linewidth=1)
    axes[0].set(title="training loss", xlabel="step", yscale="log")
    axes[1].plot(history["lr"])
    axes[1].set(title="learning rate (WarmupCosineDecay)", xlabel="step")
    axes[2].plot(history["grad_norm"], linewidth=1, label="before clipping")
    axes[2].axhline(1.0, color="red", linestyle="--", label="clip_by_global_norm(1.0)")
    axes[2].set(title="gradient global norm", xlabel="step", yscale="log")
    axes[2].legend()
    fig.tight_layout()
    plt.show()
    """),
    code("""
    grid = np.linspace(-1.2, 1.2, 200, dtype=np.float32)
    gx, gy = np.meshgrid(grid, grid)
    predicted = jnp.argmax(mlp(params, np.stack([gx.ravel(), gy.ravel()], axis=1)), axis=1)

    plt.figure(figsize=(4, 4))
    plt.contourf(gx, gy, predicted.reshape(gx.shape), alpha=0.3, cmap="viridis")
    plt.scatter(x_train[:, 0], x_train[:, 1], c=y_train, s=6, cmap="viridis")
    plt.title(f"decision regions, accuracy {accuracy:.1%}")
    plt.axis("equal")
    plt.show()
    """),
    md("""
    ## The same optimizer with Keras's `global_clipnorm` argument

    Every kopt optimizer also takes Keras's cross-cutting arguments, applied in Keras's order
    (clip, then weight decay, then the update). `adamw(..., global_clipnorm=1.0)` is the
    chain above in one call:
    """),
    code("""
    one_call = kopt.functional.adamw(learning_rate=schedule, weight_decay=1e-4, global_clipnorm=1.0)


    @jax.jit
    def one_call_step(params, opt_state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, opt_state = one_call.update(grads, opt_state, params)
        return kopt.functional.apply_updates(params, updates), opt_state


    p_chain = p_call = init_mlp(seed=0)
    s_chain, s_call = tx.init(p_chain), one_call.init(p_call)
    for i in range(5):
        x, y = x_train[i * BATCH:(i + 1) * BATCH], y_train[i * BATCH:(i + 1) * BATCH]
        p_chain, s_chain, _, _ = train_step(p_chain, s_chain, x, y)
        p_call, s_call = one_call_step(p_call, s_call, x, y)

    gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(p_chain), jax.tree.leaves(p_call)))
    assert gap < 1e-6, gap
    print(f"after 5 steps the two optimizers' parameters differ by at most {gap:.1e}")
    """),
    md("""
    ## Next

    - [02_keras_style_loop.ipynb](02_keras_style_loop.ipynb): the stateful, Keras-style
      optimizers (`kopt.Variable`, `apply_gradients`, checkpoints).
    - [03_schedules.ipynb](03_schedules.ipynb): every learning-rate schedule, plotted.
    - [04_colab_tpu.ipynb](04_colab_tpu.ipynb): sharded training on every device of a TPU (or
      GPU, or CPU) runtime.
    """),
]

# --------------------------------------------------------------------------- 02
KERAS_LOOP = [
    md("""
    # A Keras-style training loop, with checkpoint and resume

    This notebook follows the Keras guide
    [Writing a training loop from scratch in JAX](https://keras.io/guides/writing_a_custom_training_loop_in_jax/)
    and the custom-loop usage on [keras.io/api/optimizers](https://keras.io/api/optimizers/),
    with kopt's stateful optimizers in place of `keras.optimizers`:

    - the model's weights are `kopt.Variable`s, mutable boxes around `jax.Array`s;
    - each step computes gradients with `jax.value_and_grad` (JAX's counterpart of
      `GradientTape`) and applies them with `optimizer.apply_gradients(zip(grads, variables))`;
    - `optimizer.iterations` counts the updates, and drives the learning-rate schedule.

    Then it saves a checkpoint (the variables' values and `optimizer.get_weights()`), resumes
    from it in fresh objects, and checks that the resumed run continues *exactly* as the
    uninterrupted one. Changes from the guide: the data is synthetic (no download), the model
    is plain JAX functions of the Variables' values instead of a `keras.Model`, and the
    learning rate follows a schedule.
    """),
    code(COLAB_INSTALL),
    code("""
    import tempfile
    from pathlib import Path

    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    import kopt

    print(f"kopt {kopt.__version__}, jax {jax.__version__}, running on {jax.devices()[0].platform}")
    """),
    md("""
    ## Data and model

    MNIST-shaped synthetic data: 784 features, 10 classes, each class a noisy copy of its own
    random prototype. The model is the guide's: `Dense(64, relu)`, `Dense(64, relu)`,
    `Dense(10)` producing logits, with Keras's Glorot-uniform kernels and zero biases.
    """),
    code("""
    NUM_FEATURES, NUM_CLASSES, NUM_SAMPLES, BATCH_SIZE = 784, 10, 1024, 32
    STEPS_PER_EPOCH = NUM_SAMPLES // BATCH_SIZE

    data_rng = np.random.default_rng(0)
    prototypes = data_rng.standard_normal((NUM_CLASSES, NUM_FEATURES)).astype(np.float32)
    y_train = data_rng.integers(0, NUM_CLASSES, NUM_SAMPLES).astype(np.int32)
    x_train = prototypes[y_train] + 3.0 * data_rng.standard_normal((NUM_SAMPLES, NUM_FEATURES)).astype(np.float32)


    def batches(epoch):
        \"\"\"The epoch's shuffled batches; the same epoch number gives the same batches.\"\"\"
        order = np.random.default_rng(100 + epoch).permutation(NUM_SAMPLES)
        for i in range(STEPS_PER_EPOCH):
            idx = order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
            yield x_train[idx], y_train[idx]


    def get_model_variables(seed):
        \"\"\"[kernel, bias] for each of the three Dense layers, as kopt.Variables.\"\"\"
        rng = np.random.default_rng(seed)
        variables = []
        for name, n_in, n_out in [("dense", 784, 64), ("dense_1", 64, 64), ("predictions", 64, 10)]:
            limit = np.sqrt(6.0 / (n_in + n_out))
            kernel = rng.uniform(-limit, limit, (n_in, n_out)).astype(np.float32)
            variables.append(kopt.Variable(kernel, name=f"{name}/kernel"))
            variables.append(kopt.Variable(np.zeros(n_out, np.float32), name=f"{name}/bias"))
        return variables


    def forward(values, x):
        k0, b0, k1, b1, k2, b2 = values
        x = jax.nn.relu(x @ k0 + b0)
        x = jax.nn.relu(x @ k1 + b1)
        return x @ k2 + b2


    def compute_loss(values, x, y):
        \"\"\"Sparse categorical cross-entropy from logits, averaged over the batch.\"\"\"
        log_probs = jax.nn.log_softmax(forward(values, x))
        return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))


    trainable_variables = get_model_variables(seed=1)
    print([(v.name, v.shape) for v in trainable_variables])
    """),
    md("""
    ## The training loop

    The guide's optimizer is `Adam(learning_rate=1e-3)`; here Adam follows a cosine decay
    from 1e-3 over three epochs, so that resuming also has to restore the schedule's
    position. `grad_fn` is jitted once; `apply_gradients` runs one cached, jitted update over
    all six variables and adds 1 to `optimizer.iterations`.
    """),
    code("""
    EPOCHS = 3
    schedule = kopt.schedules.CosineDecay(1e-3, decay_steps=EPOCHS * STEPS_PER_EPOCH, alpha=0.1)
    optimizer = kopt.optimizers.Adam(learning_rate=schedule)
    grad_fn = jax.jit(jax.value_and_grad(compute_loss))


    def train_epoch(epoch, variables, optimizer, log_every=8):
        losses = []
        for step, (x, y) in enumerate(batches(epoch)):
            loss, grads = grad_fn([v.value for v in variables], x, y)
            optimizer.apply_gradients(zip(grads, variables))
            losses.append(float(loss))
            if step % log_every == 0:
                print(f"epoch {epoch} step {step:2d}: loss {losses[-1]:.4f}, "
                      f"iterations {int(optimizer.iterations)}, lr {float(optimizer.learning_rate):.2e}")
        return losses


    losses = {}
    for epoch in range(2):
        losses[epoch] = train_epoch(epoch, trainable_variables, optimizer)
    print("optimizer.iterations =", int(optimizer.iterations))
    """),
    md("""
    ## Checkpoint

    The whole training state is the variables' values plus the optimizer's weights.
    `optimizer.get_weights()` is a list of numpy arrays in the legacy tf.keras layout: the
    iteration count first, then Adam's `m` for every variable, then `v` for every variable.
    Both go into one `.npz` file.
    """),
    code("""
    def save_checkpoint(path, variables, optimizer):
        arrays = {f"variable_{i}": np.array(v) for i, v in enumerate(variables)}
        arrays.update({f"optimizer_{i}": w for i, w in enumerate(optimizer.get_weights())})
        np.savez(path, **arrays)


    def load_checkpoint(path, variables, optimizer):
        with np.load(path) as ckpt:
            for i, v in enumerate(variables):
                v.assign(ckpt[f"variable_{i}"])
            optimizer.build(variables)  # creates the state, so that set_weights can fill it
            n = sum(1 for key in ckpt.files if key.startswith("optimizer_"))
            optimizer.set_weights([ckpt[f"optimizer_{i}"] for i in range(n)])


    checkpoint_dir = tempfile.TemporaryDirectory()
    checkpoint = Path(checkpoint_dir.name) / "after_epoch_1.npz"
    save_checkpoint(checkpoint, trainable_variables, optimizer)

    weights = optimizer.get_weights()
    print(f"optimizer.get_weights(): {len(weights)} arrays")
    print("  iterations:", weights[0].dtype, weights[0].shape, "=", int(weights[0]))
    print("  m:", [w.shape for w in weights[1:7]])
    print("  v:", [w.shape for w in weights[7:]])
    """),
    md("""
    ## Keep going, then resume from the checkpoint

    First the uninterrupted run trains its third epoch. Then a fresh optimizer (rebuilt from
    the first one's config, schedule included) and freshly initialised variables load the
    checkpoint and train the same epoch.
    """),
    code("""
    losses[2] = train_epoch(2, trainable_variables, optimizer)
    """),
    code("""
    resumed_variables = get_model_variables(seed=2)  # different values: the checkpoint overwrites them
    resumed_optimizer = kopt.optimizers.Adam.from_config(optimizer.get_config())
    load_checkpoint(checkpoint, resumed_variables, resumed_optimizer)
    print("resumed at iterations =", int(resumed_optimizer.iterations),
          f"with learning rate {float(resumed_optimizer.learning_rate):.3e}")

    resumed_losses = train_epoch(2, resumed_variables, resumed_optimizer)
    """),
    code("""
    assert resumed_losses == losses[2]
    for a, b in zip(trainable_variables, resumed_variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    for a, b in zip(optimizer.get_weights(), resumed_optimizer.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert int(resumed_optimizer.iterations) == int(optimizer.iterations) == EPOCHS * STEPS_PER_EPOCH

    print(f"The resumed run matches the uninterrupted one exactly: {len(resumed_losses)} equal losses, "
          f"{len(resumed_variables)} bitwise-equal variables, "
          f"{len(resumed_optimizer.get_weights())} bitwise-equal optimizer arrays, "
          f"iterations {int(resumed_optimizer.iterations)} in both.")
    """),
    code("""
    all_losses = losses[0] + losses[1] + losses[2]
    resumed_steps = np.arange(2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH)

    plt.figure(figsize=(8, 3.4))
    plt.plot(all_losses, label="uninterrupted run", linewidth=2.5, alpha=0.5)
    plt.plot(resumed_steps, resumed_losses, "k--", label="resumed from the checkpoint", linewidth=1)
    plt.axvline(2 * STEPS_PER_EPOCH, color="gray", linestyle=":", label="checkpoint")
    plt.xlabel("step")
    plt.ylabel("loss")
    plt.yscale("log")
    plt.legend()
    plt.title("checkpoint and resume: the two curves coincide")
    plt.show()
    """),
    md("""
    ## The fully jitted variant: `stateless_apply`

    The Keras guide jits the whole training step, optimizer included, with
    `optimizer.stateless_apply`. kopt has the same escape hatch:
    `optimizer.stateless_apply(state, grads, values) -> (values, state)` with
    `optimizer.state` as the state. Calling `apply_gradients` inside `jax.jit` raises a
    `RuntimeError` that points here.

    Starting again from the checkpoint, one jitted call per batch replaces `grad_fn` plus
    `apply_gradients`, and the final values and state are written back into the Variables and
    the optimizer. The check allows for float32 rounding, since XLA compiles one fused program
    instead of two; on this CPU the results come out identical.
    """),
    code("""
    jit_variables = get_model_variables(seed=3)
    jit_optimizer = kopt.optimizers.Adam.from_config(optimizer.get_config())
    load_checkpoint(checkpoint, jit_variables, jit_optimizer)


    @jax.jit
    def train_step(values, opt_state, x, y):
        loss, grads = jax.value_and_grad(compute_loss)(values, x, y)
        values, opt_state = jit_optimizer.stateless_apply(opt_state, grads, values)
        return values, opt_state, loss


    values, opt_state = [v.value for v in jit_variables], jit_optimizer.state
    jit_losses = []
    for x, y in batches(2):
        values, opt_state, loss = train_step(values, opt_state, x, y)
        jit_losses.append(float(loss))

    # Write the final values and state back into the stateful objects.
    for variable, value in zip(jit_variables, values):
        variable.assign(value)
    jit_optimizer.state = opt_state

    np.testing.assert_allclose(jit_losses, losses[2], rtol=1e-4)
    for a, b in zip(jit_variables, trainable_variables):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6)
    gap = max(float(np.max(np.abs(np.array(a) - np.array(b)))) for a, b in zip(jit_variables, trainable_variables))
    print(f"iterations {int(jit_optimizer.iterations)}; largest difference from apply_gradients: {gap:.1e}")
    checkpoint_dir.cleanup()
    """),
]

# --------------------------------------------------------------------------- 03
SCHEDULES = [
    md("""
    # Learning-rate schedules

    `kopt.schedules` (the same objects are `kopt.optimizers.schedules`) holds Keras 3's six
    schedules, with Keras's arguments and formulas, and six more: `Constant`,
    `LinearWarmup`, `WarmupCosineDecay`, `OneCycle`, `WarmupStableDecay` (WSD) and
    `JoinSchedules`. Every schedule is a pure function `schedule(step) -> learning rate`,
    which works on a scalar or an array of steps, under `jit` and `vmap`, in both of kopt's
    layers.

    This notebook plots every one of them, then looks closer at warmup and at WSD.
    """),
    code(COLAB_INSTALL),
    code("""
    import json

    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    import kopt
    from kopt import schedules as S

    # Schedules work on arrays of steps; jitting each call compiles it once, which is faster
    # than running it op by op.
    steps = jnp.arange(1001)


    def plot_panels(panels, cols=3, title=None):
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 2.8 * rows), sharex=True)
        for ax, (name, curves) in zip(axes.flat, panels):
            for label, schedule in curves:
                ax.plot(steps, jax.jit(schedule)(steps), label=label or None, linewidth=1.6)
            ax.set_title(name, fontsize=11)
            ax.set_ylim(-0.05, 1.08)
            if any(label for label, _ in curves):
                ax.legend(fontsize=8)
        for ax in axes[-1]:
            ax.set_xlabel("step")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        plt.show()
    """),
    md("""
    ## Keras 3's six

    Same constructor arguments, formulas and configs as `keras.optimizers.schedules`.
    """),
    code("""
    plot_panels([
        ("ExponentialDecay", [
            ("smooth", S.ExponentialDecay(1.0, decay_steps=200, decay_rate=0.5)),
            ("staircase=True", S.ExponentialDecay(1.0, decay_steps=200, decay_rate=0.5, staircase=True)),
        ]),
        ("PiecewiseConstantDecay", [
            ("", S.PiecewiseConstantDecay(boundaries=[300, 600, 800], values=[1.0, 0.5, 0.2, 0.05])),
        ]),
        ("PolynomialDecay", [
            ("power=1", S.PolynomialDecay(1.0, decay_steps=800, end_learning_rate=0.1)),
            ("power=2", S.PolynomialDecay(1.0, decay_steps=800, end_learning_rate=0.1, power=2.0)),
            ("power=0.5, cycle=True",
             S.PolynomialDecay(1.0, decay_steps=300, end_learning_rate=0.1, power=0.5, cycle=True)),
        ]),
        ("InverseTimeDecay", [
            ("smooth", S.InverseTimeDecay(1.0, decay_steps=100, decay_rate=0.5)),
            ("staircase=True", S.InverseTimeDecay(1.0, decay_steps=100, decay_rate=0.5, staircase=True)),
        ]),
        ("CosineDecay", [
            ("alpha=0.1", S.CosineDecay(1.0, decay_steps=1000, alpha=0.1)),
            ("warmup_target=1, warmup_steps=100",
             S.CosineDecay(0.0, decay_steps=900, warmup_target=1.0, warmup_steps=100)),
        ]),
        ("CosineDecayRestarts", [
            ("t_mul=2", S.CosineDecayRestarts(1.0, first_decay_steps=100)),
            ("t_mul=1, m_mul=0.8", S.CosineDecayRestarts(1.0, first_decay_steps=200, t_mul=1.0, m_mul=0.8)),
        ]),
    ], title="Keras 3's schedules")
    """),
    md("""
    ## Beyond Keras

    - `Constant(lr)`: the same rate at every step (useful inside `JoinSchedules`).
    - `LinearWarmup(schedule, warmup_steps)`: a linear ramp in front of any schedule or float;
      the wrapped schedule then starts from its own step 0.
    - `WarmupCosineDecay`: linear warmup to a peak, then cosine decay to an absolute end rate.
    - `OneCycle`: the one-cycle policy of Smith and Topin (up, then down far below the start).
    - `WarmupStableDecay`: warmup, a long constant phase, then a short decay (WSD).
    - `JoinSchedules(schedules, boundaries)`: schedules one after another, each from its own
      step 0.
    """),
    code("""
    plot_panels([
        ("Constant", [("", S.Constant(0.7))]),
        ("LinearWarmup", [
            ("into ExponentialDecay", S.LinearWarmup(S.ExponentialDecay(1.0, 200, 0.5), warmup_steps=150)),
            ("into a constant 0.5", S.LinearWarmup(0.5, warmup_steps=300)),
        ]),
        ("WarmupCosineDecay", [
            ("", S.WarmupCosineDecay(1.0, warmup_steps=100, decay_steps=800, end_learning_rate=0.05)),
        ]),
        ("OneCycle", [
            ("cosine", S.OneCycle(1.0, total_steps=1000)),
            ("linear", S.OneCycle(1.0, total_steps=1000, anneal_strategy="linear")),
        ]),
        ("WarmupStableDecay", [
            (shape, S.WarmupStableDecay(1.0, warmup_steps=100, stable_steps=600, decay_steps=300,
                                        decay_shape=shape))
            for shape in ("linear", "cosine", "1-sqrt")
        ]),
        ("JoinSchedules", [
            ("warmup | constant | exponential",
             S.JoinSchedules([S.LinearWarmup(1.0, 100), 0.6, S.ExponentialDecay(0.6, 100, 0.5)],
                             boundaries=[100, 500])),
        ]),
    ], title="kopt's additions")
    """),
    md("""
    ## Warmup, three ways

    A warmup ramps the rate up linearly from a small value while Adam's moment estimates are
    still noisy. kopt offers it three ways; all three below warm up over 100 steps to a peak
    of 1 and then decay by a cosine:

    - `LinearWarmup(schedule, warmup_steps)` wraps any schedule: after the warmup, the wrapped
      schedule starts from its own step 0;
    - Keras's `CosineDecay(..., warmup_target=..., warmup_steps=...)`;
    - `WarmupCosineDecay(peak, warmup_steps, decay_steps, end_learning_rate=...)`, which
      decays to an absolute end rate rather than a fraction `alpha` of the peak.
    """),
    code("""
    WARMUP = 100
    warmups = {
        "LinearWarmup(CosineDecay)": S.LinearWarmup(S.CosineDecay(1.0, decay_steps=900), warmup_steps=WARMUP),
        "CosineDecay(warmup_target=1)": S.CosineDecay(0.0, decay_steps=900, warmup_target=1.0,
                                                      warmup_steps=WARMUP),
        "WarmupCosineDecay(end=0.1)": S.WarmupCosineDecay(1.0, warmup_steps=WARMUP, decay_steps=900,
                                                          end_learning_rate=0.1),
    }

    curves = {name: np.asarray(jax.jit(schedule)(steps)) for name, schedule in warmups.items()}

    fig, (full, zoom) = plt.subplots(1, 2, figsize=(12, 3.4))
    for ax, upto in ((full, 1001), (zoom, 2 * WARMUP)):
        ax.axvspan(0, WARMUP, color="orange", alpha=0.15, label="warmup")
        for (name, values), style in zip(curves.items(), ["-", "--", ":"]):
            ax.plot(steps[:upto], values[:upto], style, label=name, linewidth=2)
        ax.set_xlabel("step")
    full.set_title("warmup, then cosine decay")
    zoom.set_title(f"the first {2 * WARMUP} steps")
    zoom.legend(fontsize=8)
    fig.tight_layout()
    plt.show()

    print("LinearWarmup at steps 0, 25, 50, 75, 100:", curves["LinearWarmup(CosineDecay)"][:101:25].round(3))
    """),
    md("""
    ## Warmup-stable-decay (WSD)

    WSD (used to train MiniCPM; Hu et al., 2024) keeps the peak rate for most of the run and
    decays only at the end. Runs of different lengths share their warmup and stable phases,
    so one long run can be branched from a checkpoint taken during the stable phase, and
    each branch decays on its own: the total length need not be fixed in advance.

    `decay_shape` chooses the decay: `"linear"`, `"cosine"`, or `"1-sqrt"`
    ($1 - \\sqrt{t}$ over the decay phase).
    """),
    code("""
    WARM, STABLE, DECAY = 100, 600, 300
    fig, (shapes_ax, branches_ax) = plt.subplots(1, 2, figsize=(12, 3.6))
    for start, stop, label, color in [(0, WARM, "warmup", "orange"), (WARM, WARM + STABLE, "stable", "green"),
                                      (WARM + STABLE, WARM + STABLE + DECAY, "decay", "purple")]:
        shapes_ax.axvspan(start, stop, color=color, alpha=0.12)
        shapes_ax.text((start + stop) / 2, 1.05, label, ha="center", color=color)
    for shape in ("linear", "cosine", "1-sqrt"):
        wsd = S.WarmupStableDecay(1.0, warmup_steps=WARM, stable_steps=STABLE, decay_steps=DECAY,
                                  end_learning_rate=0.0, decay_shape=shape)
        shapes_ax.plot(steps, jax.jit(wsd)(steps), label=f'decay_shape="{shape}"', linewidth=2)
    shapes_ax.set(title="WarmupStableDecay: three decay shapes", xlabel="step", ylim=(-0.05, 1.15))
    shapes_ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.14, 0.05))

    for stable in (300, 500, 700):
        wsd = S.WarmupStableDecay(1.0, warmup_steps=WARM, stable_steps=stable, decay_steps=200,
                                  decay_shape="1-sqrt")
        branches_ax.plot(steps, jax.jit(wsd)(steps), label=f"stable_steps={stable}", linewidth=2)
    branches_ax.set(title="branching decays off one stable run", xlabel="step")
    branches_ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.14, 0.05))
    fig.tight_layout()
    plt.show()
    """),
    md("""
    ## One schedule object, both layers

    A schedule is called with the optimizer's step count *before* it is incremented, as in
    Keras. The same object drives a functional transform and a stateful optimizer; it
    compiles under `jit` and `vmap`, and its config is plain JSON.
    """),
    code("""
    wsd = S.WarmupStableDecay(0.1, warmup_steps=10, stable_steps=20, decay_steps=10, end_learning_rate=0.01)
    expected = np.asarray(jax.jit(wsd)(jnp.arange(40)))  # on an array of steps

    # Stateful: opt.learning_rate is the rate the next apply_gradients uses.
    opt = kopt.optimizers.SGD(learning_rate=wsd)
    w = kopt.Variable(jnp.ones(3), name="w")
    stateful_rates = []
    for _ in range(40):
        opt.apply_gradients([(jnp.ones(3), w)])
        stateful_rates.append(float(opt.learning_rate))

    # Functional: current_learning_rate(state) is the rate the next update uses.
    tx = kopt.functional.sgd(learning_rate=wsd)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    functional_rates = []
    for _ in range(40):
        _, state = update({"w": jnp.ones(3)}, state, params)
        functional_rates.append(float(kopt.functional.current_learning_rate(state)))

    np.testing.assert_allclose(stateful_rates[:-1], expected[1:], rtol=1e-6)
    np.testing.assert_allclose(functional_rates, stateful_rates, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(wsd))(jnp.arange(40)), expected, rtol=1e-6)
    print("after k updates, both layers use schedule(k); jit and vmap agree")

    config = S.serialize(wsd)
    print(json.dumps(config, indent=1))
    assert S.deserialize(config).get_config() == wsd.get_config()
    """),
]

# --------------------------------------------------------------------------- 04
COLAB_TPU = [
    md(f"""
    # Sharded training on every device: Colab TPU, GPU or CPU

    [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/{REPO}/blob/main/notebooks/04_colab_tpu.ipynb)

    This notebook trains an MLP with kopt across all of `jax.devices()`:

    - a 2-D `Mesh` with a `data` axis and a `model` axis;
    - each batch split along `data` (data parallelism);
    - the weight matrices split along `model` (tensor parallelism) and the optimizer state
      (AdamW's `m` and `v`) split exactly like the weights it belongs to;
    - a report of the devices it ran on, and of every array's sharding.

    Nothing in it names a platform. On a Colab TPU runtime (*Runtime → Change runtime type →
    TPU*) it uses the TPU cores; on a GPU runtime, the GPU; in kopt's CI, 8 CPU devices,
    made with `XLA_FLAGS=--xla_force_host_platform_device_count=8` set before JAX starts.
    """),
    md("""
    ## Install

    kopt is not on PyPI yet (the PyPI package named `kopt` is an unrelated project). In
    Colab, upload or clone a kopt checkout into `./kopt`; the next cell installs it from
    there (the distribution is `kopt-jax`, the import name `kopt`). Colab's runtimes already
    ship JAX built for their accelerator, and kopt needs only `jax` and `numpy`, so the
    install leaves JAX as it is. Anywhere else the cell does nothing: install kopt yourself
    first (`pip install -e .` in a checkout).
    """),
    code("""
    import subprocess
    import sys

    IN_COLAB = "google.colab" in sys.modules
    if IN_COLAB:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "./kopt"], check=True)
    print("in Colab: installed kopt from ./kopt" if IN_COLAB else "not in Colab: using the installed kopt")
    """),
    code("""
    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np
    from jax.experimental import mesh_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import kopt

    devices = jax.devices()
    print(f"kopt {kopt.__version__}, jax {jax.__version__}")
    print(f"{len(devices)} {devices[0].platform} device(s) of kind {devices[0].device_kind!r}:")
    for d in devices:
        print("  ", d)
    """),
    md("""
    ## The mesh

    The `model` axis has 2 devices when the device count is even, else 1; the `data` axis
    takes the rest. `mesh_utils.create_device_mesh` orders the devices to follow the
    interconnect on TPUs.
    """),
    code("""
    n_devices = len(devices)
    model_size = 2 if n_devices % 2 == 0 else 1
    data_size = n_devices // model_size
    mesh = Mesh(mesh_utils.create_device_mesh((data_size, model_size), devices), ("data", "model"))
    print(mesh)
    """),
    md("""
    ## Sharded parameters

    A two-layer MLP in the Megatron layout: the first kernel is split by columns and the
    second by rows along `model`, so the hidden activations stay split and the only
    communication is a reduction at the output. The parameters are created directly on the
    devices, already sharded, by jitting the initialiser with `out_shardings`.
    """),
    code("""
    D_IN, HIDDEN, D_OUT = 32, 256, 1
    param_specs = {
        "dense0": {"kernel": P(None, "model"), "bias": P("model")},
        "dense1": {"kernel": P("model", None), "bias": P()},
    }
    param_shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs)
    replicated = NamedSharding(mesh, P())
    data_sharding = NamedSharding(mesh, P("data", None))


    def init_params(key):
        k0, k1 = jax.random.split(key)
        return {
            "dense0": {"kernel": jax.random.normal(k0, (D_IN, HIDDEN)) / np.sqrt(D_IN),
                       "bias": jnp.zeros((HIDDEN,))},
            "dense1": {"kernel": jax.random.normal(k1, (HIDDEN, D_OUT)) / np.sqrt(HIDDEN),
                       "bias": jnp.zeros((D_OUT,))},
        }


    def predict(params, x):
        h = jax.nn.gelu(x @ params["dense0"]["kernel"] + params["dense0"]["bias"])
        return h @ params["dense1"]["kernel"] + params["dense1"]["bias"]


    def loss_fn(params, x, y):
        return jnp.mean(jnp.square(predict(params, x) - y))


    params = jax.jit(init_params, out_shardings=param_shardings)(jax.random.key(0))
    initial_params = jax.device_get(params)  # a host copy, for the check at the end
    """),
    md("""
    ## Sharded optimizer state

    Called eagerly (outside `jit`), `tx.init` creates each per-parameter slot (AdamW's `m`
    and `v`) with the shape *and the sharding* of its parameter, so the state follows the
    parameters. The scalars (the step count, the learning rate) have no parameter to follow:
    they are replicated. The training step then returns its outputs in exactly these
    shardings, so nothing moves between steps and the step compiles once.

    On GPU and TPU, kopt by default packs the state of small leaves (up to 65,536 elements)
    into one flat buffer per dtype, which is replicated; every weight of this small model
    is that small, so `bucket_threshold=0` turns packing off to keep each slot sharded like
    its parameter, on every platform.
    """),
    code("""
    STEPS = 150
    schedule = kopt.schedules.WarmupCosineDecay(1e-2, warmup_steps=15, decay_steps=STEPS - 15,
                                                end_learning_rate=1e-4)
    tx = kopt.functional.adamw(learning_rate=schedule, weight_decay=1e-4, global_clipnorm=1.0,
                               bucket_threshold=0)

    opt_state = tx.init(params)
    state_shardings = jax.tree.map(
        lambda a: a.sharding if isinstance(a.sharding, NamedSharding) else replicated, opt_state)
    opt_state = jax.device_put(opt_state, state_shardings)


    def step_fn(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return kopt.functional.apply_updates(params, updates), opt_state, loss


    train_step = jax.jit(step_fn, donate_argnums=(0, 1),
                         out_shardings=(param_shardings, state_shardings, replicated))
    """),
    md("""
    ## Training

    A synthetic regression problem: fit a fixed random "teacher" network. Each global batch
    has 64 rows per `data` shard and is placed on the devices split along `data`.
    """),
    code("""
    BATCH = 64 * data_size
    teacher_rng = np.random.default_rng(0)
    w_teacher = teacher_rng.standard_normal((D_IN, 8)).astype(np.float32) / np.sqrt(D_IN)
    v_teacher = teacher_rng.standard_normal((8, D_OUT)).astype(np.float32) / np.sqrt(8)


    def get_batch(step):
        \"\"\"The global batch of a step, as numpy arrays.\"\"\"
        rng = np.random.default_rng(1000 + step)
        x = rng.standard_normal((BATCH, D_IN)).astype(np.float32)
        y = np.tanh(x @ w_teacher) @ v_teacher
        return x, y


    losses = []
    for step in range(STEPS):
        x, y = (jax.device_put(a, data_sharding) for a in get_batch(step))
        params, opt_state, loss = train_step(params, opt_state, x, y)
        losses.append(loss)
        if step % 50 == 0 or step == STEPS - 1:
            print(f"step {step:3d}  loss {float(loss):.4f}")
    losses = np.asarray(jnp.stack(losses))

    plt.figure(figsize=(7, 3.2))
    plt.plot(losses)
    plt.yscale("log")
    plt.xlabel("step")
    plt.ylabel("loss")
    plt.title(f"AdamW on a {data_size} x {model_size} mesh of {n_devices} {devices[0].platform} device(s)")
    plt.show()
    """),
    md("""
    ## Where it ran

    Every parameter and every piece of optimizer state, with its partition spec and the
    shape of the piece each device holds.
    """),
    code("""
    def describe(name, a):
        print(f"  {name:22s} {str(a.shape):10s} {str(a.sharding.spec):18s}"
              f" {str(a.addressable_shards[0].data.shape):9s} per device, on {len(a.sharding.device_set)} device(s)")


    print("parameters:")
    for path, a in jax.tree_util.tree_leaves_with_path(params):
        describe(jax.tree_util.keystr(path), a)
    print(f"optimizer state ({type(opt_state).__name__}):")
    for field in opt_state._fields:
        leaves = jax.tree.leaves(getattr(opt_state, field))
        for i, a in enumerate(leaves):
            describe(field if len(leaves) == 1 else f"{field}[{i}]", a)

    used = set().union(*(a.sharding.device_set for a in jax.tree.leaves((params, opt_state))))
    assert used == set(devices), (used, devices)
    kernel = params["dense0"]["kernel"]
    print(f"\\nTrained on all {len(used)} {devices[0].platform} device(s); "
          f"the first kernel's pieces live on:")
    for shard in kernel.addressable_shards:
        rows, cols = (f"{s.start or 0}:{s.stop or n}" for s, n in zip(shard.index, kernel.shape))
        print(f"  {shard.device}: rows {rows}, columns {cols}")
    """),
    md("""
    ## The same maths as on one device

    Sharding changes where the arithmetic happens, not what it computes: the first 50 steps
    on one device, from the same initial parameters and batches, give the same losses, up to
    float32 rounding in the reductions.
    """),
    code("""
    params_1 = jax.device_put(initial_params, devices[0])
    state_1 = tx.init(params_1)
    step_1 = jax.jit(step_fn)
    losses_1 = []
    for step in range(50):
        x, y = (jax.device_put(a, devices[0]) for a in get_batch(step))
        params_1, state_1, loss = step_1(params_1, state_1, x, y)
        losses_1.append(loss)
    losses_1 = np.asarray(jnp.stack(losses_1))
    np.testing.assert_allclose(losses[:50], losses_1, rtol=1e-3)
    print(f"largest relative difference in 50 losses: {np.max(np.abs(losses[:50] - losses_1) / losses_1):.1e}")
    """),
    md("""
    ## Notes

    - **Colab TPU runtimes** are a single host, so `jax.devices()` lists every core and
      nothing more is needed. On a multi-host TPU pod slice, call `jax.distributed.initialize()`
      first and feed each host its part of the batch.
    - **Bigger models** shard more axes the same way: give each parameter a `PartitionSpec`,
      and the optimizer state follows.
    """),
]

# --------------------------------------------------------------------------- 05
REAL_DATA = [
    md("""
    # Real data: handwritten digits, kopt against optax and Keras's Adam

    The other notebooks train on synthetic data. This one trains on the handwritten digits
    that ship with scikit-learn (`sklearn.datasets.load_digits`: 1,797 grey-scale images of
    8 x 8 pixels, no download) with a fixed train/test split, and compares kopt's Adam with
    the two Adams its users know:

    1. a small flax.nnx CNN trained with `kopt.functional.adam` in a jitted step, and with
       `optax.adam` in the same step;
    2. the same CNN trained with the stateful facade, `kopt.optimizers.Adam` and
       `apply_gradients`, which update the nnx module in place;
    3. a small Keras MLP trained with `model.fit`, once through
       `kopt.interop.keras.wrap(kopt.optimizers.Adam(...))` and once with Keras's own
       `keras.optimizers.Adam`.

    Within each group every run starts from the same initial weights (same seed) and sees
    the same batches.

    **What to expect** (the cells below assert it):

    - kopt's functional transform and its stateful facade run the same update, so they
      give the same losses and weights (bit for bit in the stored CPU run).
    - kopt's Adam *is* Keras's Adam: same arguments, defaults and formula. Trained by `fit`
      from the same seed, the two Keras runs give equal curves to float32 rounding (bit for
      bit in the stored CPU run).
    - kopt's Adam is *not* bit-equal to optax's, even with the same epsilon value. Keras (and
      kopt) add epsilon to $\\sqrt{v}$ before the bias correction,
      $\\theta \\leftarrow \\theta - \\alpha_t\\, m/(\\sqrt{v}+\\epsilon)$ with
      $\\alpha_t = \\eta\\sqrt{1-\\beta_2^t}/(1-\\beta_1^t)$, while optax adds it to the
      bias-corrected $\\sqrt{\\hat v}$. So kopt's step is optax's with epsilon replaced by
      $\\epsilon/\\sqrt{1-\\beta_2^t}$: about 32 times larger at the first step (with
      $\\beta_2 = 0.999$), tending to $\\epsilon$. The loss curves start on top of each
      other, then drift apart as training amplifies the small differences, and end at about
      the same test accuracy.

    It runs in under a minute on a CPU.
    """),
    code(COLAB_INSTALL),
    code("""
    import os

    os.environ["KERAS_BACKEND"] = "jax"  # before Keras is imported: kopt.interop.keras needs JAX

    import flax
    import jax
    import jax.numpy as jnp
    import keras
    import matplotlib.pyplot as plt
    import numpy as np
    import optax
    from flax import nnx
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    import kopt
    import kopt.interop.flax
    import kopt.interop.keras

    print(f"kopt {kopt.__version__}, jax {jax.__version__}, flax {flax.__version__}, "
          f"optax {optax.__version__}, keras {keras.__version__}, running on {jax.devices()[0].platform}")
    """),
    md("""
    ## Data

    The pixels take the values 0 to 16: they are scaled to [0, 1] and given a channel axis.
    A stratified split keeps a quarter of the images as the test set, always the same
    quarter (`random_state=0`).
    """),
    code("""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, random_state=0, stratify=labels)
    print(f"train {x_train.shape}, test {x_test.shape}, training images per class {np.bincount(y_train)}")

    fig, axes = plt.subplots(2, 10, figsize=(10, 2.4))
    for ax, image, label in zip(axes.ravel(), x_train, y_train):
        ax.imshow(image[..., 0], cmap="gray_r")
        ax.set_title(str(label), fontsize=9)
        ax.axis("off")
    fig.suptitle("training images and their labels")
    fig.tight_layout()
    plt.show()
    """),
    md("""
    ## The flax.nnx CNN

    Two 3 x 3 convolutions, each followed by ReLU and 2 x 2 average pooling, then a linear
    layer to the 10 logits: about 6,000 parameters. Each epoch visits the training set in a
    new order, the same for every run, in batches of 64; the last, partial batch is dropped,
    so every step has the same shapes and the step compiles once.
    """),
    code("""
    LEARNING_RATE, BATCH_SIZE, EPOCHS, SEED = 1e-2, 64, 10, 0
    STEPS_PER_EPOCH = len(x_train) // BATCH_SIZE


    def batches(epoch):
        \"\"\"The epoch's shuffled batches; the same epoch number gives the same batches.\"\"\"
        order = np.random.default_rng(epoch).permutation(len(x_train))
        for i in range(STEPS_PER_EPOCH):
            idx = order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
            yield x_train[idx], y_train[idx]


    class CNN(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.conv1 = nnx.Conv(1, 16, kernel_size=(3, 3), rngs=rngs)
            self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), rngs=rngs)
            self.head = nnx.Linear(2 * 2 * 32, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.avg_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))  # 4 x 4 x 16
            x = nnx.avg_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))  # 2 x 2 x 32
            return self.head(x.reshape(x.shape[0], -1))


    def loss_fn(model, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


    @nnx.jit
    def evaluate(model, x, y):
        \"\"\"Loss and accuracy on (x, y).\"\"\"
        logits = model(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, jnp.mean(jnp.argmax(logits, axis=-1) == y)


    def new_history():
        return {"loss": [], "test_loss": [], "test_accuracy": []}


    def end_epoch(history, model):
        test_loss, test_accuracy = evaluate(model, x_test, y_test)
        history["test_loss"].append(float(test_loss))
        history["test_accuracy"].append(float(test_accuracy))


    def finish(history):
        return {key: np.asarray(jnp.stack(values)) for key, values in history.items()}


    params = kopt.interop.flax.variables(CNN(nnx.Rngs(SEED)))  # nnx.Params, with their paths
    print({p.name: p.shape for p in params})
    print(f"{sum(p.value.size for p in params)} parameters, {STEPS_PER_EPOCH} steps per epoch")
    """),
    md("""
    ## 1. `kopt.functional` (and `optax`) in a jitted step

    `nnx.split` turns the module into a static `graphdef` and a pytree of parameters; the
    step differentiates the loss of `nnx.merge(graphdef, params)` with respect to the
    parameters and applies the transform's updates, all in one `jax.jit`. The same function
    trains with an optax transform: only `tx` changes. optax gets `eps=1e-7`, Keras's and
    kopt's default (optax's is 1e-8), so that the placement of epsilon is the only
    difference in the maths (the arithmetic is also ordered differently, which changes the
    last bits).
    """),
    code("""
    def train_functional(tx):
        \"\"\"Train a fresh CNN (seed SEED) with the transform `tx`; return its history and params.\"\"\"
        graphdef, params = nnx.split(CNN(nnx.Rngs(SEED)), nnx.Param)
        opt_state = tx.init(params)

        @jax.jit
        def train_step(params, opt_state, x, y):
            loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p), x, y))(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return kopt.functional.apply_updates(params, updates), opt_state, loss

        history = new_history()
        for epoch in range(EPOCHS):
            for x, y in batches(epoch):
                params, opt_state, loss = train_step(params, opt_state, x, y)
                history["loss"].append(loss)
            end_epoch(history, nnx.merge(graphdef, params))
        return finish(history), params


    runs = {}
    runs["kopt.functional.adam"], functional_params = train_functional(kopt.functional.adam(LEARNING_RATE))
    runs["optax.adam"], _ = train_functional(optax.adam(LEARNING_RATE, eps=1e-7))
    for name, run in runs.items():
        print(f"{name:22s} test accuracy after each epoch: {np.round(run['test_accuracy'], 3)}")
    """),
    md("""
    ## 2. The stateful facade on the nnx module

    `kopt.interop.flax.variables(model)` lists the module's `nnx.Param`s in the leaf order of
    the gradients `nnx.grad` returns, as objects that `apply_gradients` updates in place:
    the model itself is trained, as with a Keras optimizer. The gradients come from an
    `nnx.jit`-compiled function; `apply_gradients` runs kopt's own cached, jitted update.
    (Inside `nnx.jit`, `nnx.Optimizer(model, kopt.interop.flax.transform(tx), wrt=nnx.Param)`
    is the other route.)
    """),
    code("""
    model = CNN(nnx.Rngs(SEED))
    optimizer = kopt.optimizers.Adam(learning_rate=LEARNING_RATE)
    variables = kopt.interop.flax.variables(model)
    grad_fn = nnx.jit(nnx.value_and_grad(loss_fn))

    history = new_history()
    for epoch in range(EPOCHS):
        for x, y in batches(epoch):
            loss, grads = grad_fn(model, x, y)
            optimizer.apply_gradients(zip(jax.tree.leaves(grads), variables))
            history["loss"].append(loss)
        end_epoch(history, model)
    runs["kopt.optimizers.Adam"] = finish(history)
    assert int(optimizer.iterations) == EPOCHS * STEPS_PER_EPOCH

    # The same update as the functional transform: the same losses and the same weights.
    np.testing.assert_allclose(runs["kopt.optimizers.Adam"]["loss"], runs["kopt.functional.adam"]["loss"],
                               rtol=1e-5)
    weight_gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(functional_params)))
    assert weight_gap < 1e-5, weight_gap
    loss_gap = np.max(np.abs(runs["kopt.optimizers.Adam"]["loss"] - runs["kopt.functional.adam"]["loss"]))
    print(f"{int(optimizer.iterations)} steps; stateful vs functional: largest loss difference {loss_gap:.1e}, "
          f"largest weight difference {weight_gap:.1e}")
    """),
    md("""
    ## kopt against optax

    The relative difference between the kopt and optax losses, step by step, stays below 1%
    through the first epoch and then grows as training amplifies it; the final test
    accuracies stay close (the cell checks that they are within 3 percentage points, 13 of
    the 450 test images).
    """),
    code("""
    kopt_run, optax_run = runs["kopt.functional.adam"], runs["optax.adam"]
    relative = np.abs(kopt_run["loss"] - optax_run["loss"]) / optax_run["loss"]
    per_epoch = relative.reshape(EPOCHS, STEPS_PER_EPOCH).max(axis=1)
    print("largest relative loss difference, kopt vs optax, in each epoch:")
    print("  ", " ".join(f"{r:.0e}" for r in per_epoch))
    accuracy_gap = abs(kopt_run["test_accuracy"][-1] - optax_run["test_accuracy"][-1])
    print(f"final test accuracy: kopt {kopt_run['test_accuracy'][-1]:.2%}, optax "
          f"{optax_run['test_accuracy'][-1]:.2%} ({round(accuracy_gap * len(y_test))} of {len(y_test)} images apart)")
    assert 0 < per_epoch[0] < 1e-2, per_epoch  # close, but not bit-equal
    assert accuracy_gap <= 0.03, accuracy_gap

    epochs = np.arange(1, EPOCHS + 1)
    steps = np.arange(1, EPOCHS * STEPS_PER_EPOCH + 1)
    fig, (loss_ax, acc_ax, gap_ax) = plt.subplots(1, 3, figsize=(15, 3.6))
    styles = {"kopt.functional.adam": dict(linewidth=2.5, alpha=0.45),
              "kopt.optimizers.Adam": dict(color="black", linestyle="--", linewidth=0.8),
              "optax.adam": dict(linewidth=1)}
    for name, style in styles.items():
        loss_ax.plot(steps, runs[name]["loss"], label=name, **style)
        acc_ax.plot(epochs, runs[name]["test_accuracy"], marker="o", markersize=3, label=name, **style)
    gap_ax.plot(steps, relative, linewidth=1, color="tab:orange")
    loss_ax.set(title="flax.nnx CNN: training loss", xlabel="step", yscale="log")
    acc_ax.set(title="flax.nnx CNN: test accuracy", xlabel="epoch", ylim=(0.6, 1.0))
    gap_ax.set(title="|kopt loss - optax loss| / optax loss", xlabel="step", yscale="log")
    loss_ax.legend()
    acc_ax.legend(loc="lower right")
    fig.tight_layout()
    plt.show()
    """),
    md("""
    ## 3. Keras `fit`: `kopt.interop.keras.wrap` against `keras.optimizers.Adam`

    `kopt.interop.keras.wrap(opt)` is a `keras.optimizers.Optimizer` whose update is kopt's:
    `fit` runs it inside Keras's compiled training step. The model is a small MLP (one
    hidden layer of 64 units, about 4,800 parameters), quick to compile;
    `keras.utils.set_random_seed` before each run gives both runs the same initial weights
    and the same shuffling. `fit` keeps the last, partial batch, so an epoch has one more
    step than above.
    """),
    code("""
    def keras_mlp():
        return keras.Sequential([
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ])


    def fit(optimizer):
        keras.utils.set_random_seed(SEED)  # the same initial weights and batches for every run
        model = keras_mlp()
        model.compile(optimizer=optimizer, metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=EPOCHS,
                            validation_data=(x_test, y_test), verbose=0)
        return {key: np.asarray(values) for key, values in history.history.items()}, model.get_weights()


    kopt_adam = kopt.optimizers.Adam(learning_rate=LEARNING_RATE)
    keras_runs, keras_weights = {}, {}
    keras_runs["kopt.interop.keras.wrap(kopt Adam)"], keras_weights["kopt"] = fit(
        kopt.interop.keras.wrap(kopt_adam))
    keras_runs["keras.optimizers.Adam"], keras_weights["keras"] = fit(
        keras.optimizers.Adam(learning_rate=LEARNING_RATE))
    # After fit, the wrapped kopt optimizer holds the trained state: 22 steps an epoch.
    assert int(kopt_adam.iterations) == EPOCHS * int(np.ceil(len(x_train) / BATCH_SIZE))
    print("kopt_adam.iterations after fit:", int(kopt_adam.iterations))

    wrapped, native = keras_runs.values()
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(wrapped[key], native[key], rtol=1e-5, err_msg=key)
    for a, b in zip(keras_weights["kopt"], keras_weights["keras"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    history_gap = max(np.max(np.abs(wrapped[key] - native[key])) for key in wrapped)
    weight_gap = max(np.max(np.abs(a - b)) for a, b in zip(keras_weights["kopt"], keras_weights["keras"]))
    print(f"kopt vs Keras's Adam: largest difference in the {EPOCHS}-epoch histories {history_gap:.1e}, "
          f"in the trained weights {weight_gap:.1e}")

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 3.6))
    styles = [dict(linewidth=3, alpha=0.45), dict(color="black", linestyle="--", linewidth=0.8)]
    for (name, run), style in zip(keras_runs.items(), styles):
        loss_ax.plot(epochs, run["loss"], marker="o", markersize=3, label=f"{name}, train", **style)
        loss_ax.plot(epochs, run["val_loss"], marker="s", markersize=3, label=f"{name}, test", **style)
        acc_ax.plot(epochs, run["val_accuracy"], marker="o", markersize=3, label=name, **style)
    loss_ax.set(title="Keras MLP, fit: loss", xlabel="epoch", yscale="log")
    acc_ax.set(title="Keras MLP, fit: test accuracy", xlabel="epoch", ylim=(0.6, 1.0))
    loss_ax.legend(fontsize=8)
    acc_ax.legend(loc="lower right")
    fig.tight_layout()
    plt.show()
    """),
    md("""
    ## Summary

    Final training loss (the mean over the last epoch), test loss and test accuracy of every
    run. Compare within a group: the nnx CNN and the Keras MLP are different models, trained
    on slightly different batches.
    """),
    code("""
    rows = [(f"nnx CNN, {name}", run["loss"][-STEPS_PER_EPOCH:].mean(), run["test_loss"][-1],
             run["test_accuracy"][-1]) for name, run in runs.items()]
    rows += [(f"Keras MLP fit, {name}", run["loss"][-1], run["val_loss"][-1], run["val_accuracy"][-1])
             for name, run in keras_runs.items()]
    print(f"{'run':50s} {'train loss':>10s} {'test loss':>10s} {'test accuracy':>14s}")
    for name, train_loss, test_loss, test_accuracy in rows:
        print(f"{name:50s} {train_loss:10.4f} {test_loss:10.4f} {test_accuracy:14.2%}")
    assert all(test_accuracy > 0.9 for *_, test_accuracy in rows)
    """),
    md("""
    ## Next

    - [01_quickstart_functional.ipynb](01_quickstart_functional.ipynb): `chain`, gradient
      clipping and schedules in the functional layer.
    - [02_keras_style_loop.ipynb](02_keras_style_loop.ipynb): the stateful optimizers in a
      custom loop, with checkpoint and resume.
    - The README's "Ecosystem" section and `docs/ecosystem.md`: optax, Keras 3, flax.nnx and
      orbax in more detail.
    """),
]

NOTEBOOKS = {
    "01_quickstart_functional.ipynb": QUICKSTART,
    "02_keras_style_loop.ipynb": KERAS_LOOP,
    "03_schedules.ipynb": SCHEDULES,
    "04_colab_tpu.ipynb": COLAB_TPU,
    "05_real_data.ipynb": REAL_DATA,
}


def new_notebook(name: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.from_dict(c) for c in NOTEBOOKS[name]]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"  # stable ids, so that a rebuild changes only what changed
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    if name == "04_colab_tpu.ipynb":
        nb.metadata["accelerator"] = "TPU"  # Colab opens it on a TPU runtime; others ignore it
    return nb


def kernel_env() -> dict[str, str]:
    """The environment of the kernel: 8 host devices (as in CI), inline plots."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        env["XLA_FLAGS"] = f"{flags} {XLA_DEVICES_FLAG}".strip()
    env.pop("MPLBACKEND", None)  # a non-inline backend would drop the plots
    return env


def execute(nb: nbformat.NotebookNode) -> None:
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(HERE)}})
    client.execute(env=kernel_env())


def main(argv: list[str]) -> None:
    run = "--no-execute" not in argv
    wanted = [a for a in argv if not a.startswith("--")]
    for name in NOTEBOOKS:
        if wanted and not any(w in name for w in wanted):
            continue
        nb = new_notebook(name)
        start = time.perf_counter()
        if run:
            execute(nb)
        nbformat.write(nb, HERE / name)
        print(f"wrote {name}" + (f" (executed in {time.perf_counter() - start:.1f} s)" if run else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
