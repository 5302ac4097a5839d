"""A --jobs worker's start-up, which runs/sweep.py's WORKER_STARTUP_S adds to the estimate: a
spawned Python importing the worker's modules, loading MNIST from the verified cache and
building the paper model's training step (the gradient check), until its first step could run.

    cd bench && PYTHONPATH=.. python worker_startup.py

Three starts, one after another; data from $VAEREPRO_DATA."""

import multiprocessing
import time


def worker(q):
    import torch

    from vaerepro.core.config import preset
    from vaerepro.core.data import load_mnist
    from vaerepro.core.step import make_train_step
    from vaerepro.runs import jobs  # noqa: F401
    from vaerepro.runs.state import TrainingState

    torch.set_num_threads(1)
    data = load_mnist(None, "cpu")
    cfg = preset("paper").replace(nz=200)
    s = TrainingState(cfg, data, torch.device("cpu"))
    make_train_step([s.model], [s.opt], cfg, s.train_x)
    q.put(time.perf_counter())


if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    for _ in range(3):
        q = ctx.Queue()
        start = time.perf_counter()
        p = ctx.Process(target=worker, args=(q,))
        p.start()
        print(f"worker ready after {q.get() - start:.2f} s")
        p.join()
